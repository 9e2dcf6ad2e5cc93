//! The shape of `src/`, checked: the layer table in `ARCHITECTURE.md` is
//! the law, and these tests read it. Every top-level module has a row; a
//! row may allow only modules of earlier rows (so the graph has no cycle);
//! no module imports one its row does not allow; no function outside tests
//! is longer than 60 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Longest function, in lines, outside tests.
const LONGEST_FUNCTION: usize = 60;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rows of the module table: module, and the modules it may import, in order.
fn layer_table() -> Vec<(String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(repository().join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("| module | owns | may import |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let module = cells[0].trim_matches('`').to_string();
        let allowed = cells.last().unwrap().split(',').map(|name| name.trim().trim_matches('`').to_string());
        rows.push((module, allowed.filter(|name| !name.is_empty()).collect()));
    }
    assert!(!rows.is_empty(), "ARCHITECTURE.md has no module table");
    rows
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to; `None` for `main.rs` and `lib.rs`.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let first = relative.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("main" | "lib") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first),
    }
}

fn is_test_only(attributes: &[syn::Attribute]) -> bool {
    attributes.iter().any(|attribute| {
        attribute.path().is_ident("cfg")
            && attribute.parse_args::<syn::Meta>().is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// What one file imports from the crate, and its functions' lengths.
#[derive(Default)]
struct Findings {
    imports: BTreeSet<String>,
    long_functions: Vec<(String, usize, usize)>,
}

impl<'ast> Visit<'ast> for Findings {
    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        if !is_test_only(&module.attrs) {
            syn::visit::visit_item_mod(self, module);
        }
    }

    fn visit_item_fn(&mut self, function: &'ast syn::ItemFn) {
        if !is_test_only(&function.attrs) {
            self.measure(&function.sig.ident, function);
            syn::visit::visit_item_fn(self, function);
        }
    }

    fn visit_impl_item_fn(&mut self, function: &'ast syn::ImplItemFn) {
        if !is_test_only(&function.attrs) {
            self.measure(&function.sig.ident, function);
            syn::visit::visit_impl_item_fn(self, function);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if segments.next().is_some_and(|first| first.ident == "crate") {
            if let Some(module) = segments.next() {
                self.imports.insert(module.ident.to_string());
            }
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_use_path(&mut self, path: &'ast syn::UsePath) {
        if path.ident == "crate" {
            let mut names = Vec::new();
            use_names(&path.tree, &mut names);
            self.imports.extend(names);
        }
        syn::visit::visit_use_path(self, path);
    }
}

/// The first names under `crate::` in a use tree.
fn use_names(tree: &syn::UseTree, names: &mut Vec<String>) {
    match tree {
        syn::UseTree::Path(path) => names.push(path.ident.to_string()),
        syn::UseTree::Name(name) => names.push(name.ident.to_string()),
        syn::UseTree::Rename(rename) => names.push(rename.ident.to_string()),
        syn::UseTree::Group(group) => group.items.iter().for_each(|item| use_names(item, names)),
        syn::UseTree::Glob(_) => {}
    }
}

impl Findings {
    fn measure(&mut self, name: &syn::Ident, item: &impl syn::spanned::Spanned) {
        let span = item.span();
        let lines = span.end().line - span.start().line + 1;
        if lines > LONGEST_FUNCTION {
            self.long_functions.push((name.to_string(), span.start().line, lines));
        }
    }
}

/// Each file of `src/` with its top-level module and what it was found to do.
fn survey() -> Vec<(PathBuf, String, Findings)> {
    let src = repository().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut surveyed = Vec::new();
    for file in files {
        let Some(module) = top_module(&src, &file) else { continue };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let syntax = syn::parse_file(&text).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        // A file compiled for tests only (`#![cfg(test)]`), like a `#[cfg(test)]` module.
        if is_test_only(&syntax.attrs) {
            continue;
        }
        let mut findings = Findings::default();
        findings.visit_file(&syntax);
        surveyed.push((file, module, findings));
    }
    surveyed
}

#[test]
fn the_layer_table_has_a_row_per_module_and_allows_only_lower_layers() {
    let table = layer_table();
    let mut earlier: BTreeSet<String> = BTreeSet::new();
    for (module, allowed) in &table {
        let higher: Vec<&String> = allowed.difference(&earlier).collect();
        assert!(
            higher.is_empty(),
            "ARCHITECTURE.md: `{module}` may import {higher:?}, which are not in an earlier row"
        );
        earlier.insert(module.clone());
    }
    let documented: BTreeSet<String> = table.iter().map(|(module, _)| module.clone()).collect();
    let actual: BTreeSet<String> = survey().into_iter().map(|(_, module, _)| module).collect();
    assert_eq!(documented, actual, "ARCHITECTURE.md's rows and src/'s top-level modules differ");
}

#[test]
fn no_module_imports_what_its_row_does_not_allow() {
    let table: BTreeMap<String, BTreeSet<String>> = layer_table().into_iter().collect();
    let mut violations = Vec::new();
    for (file, module, findings) in survey() {
        let allowed = &table[&module];
        for import in findings.imports.iter().filter(|import| **import != module && !allowed.contains(*import)) {
            violations.push(format!("{}: `{module}` imports `{import}`", file.display()));
        }
    }
    assert!(violations.is_empty(), "imports ARCHITECTURE.md does not allow:\n{}", violations.join("\n"));
}

#[test]
fn no_function_outside_tests_is_longer_than_sixty_lines() {
    let mut long = Vec::new();
    for (file, _, findings) in survey() {
        for (name, line, lines) in findings.long_functions {
            long.push(format!("{}:{line}: {name} has {lines} lines", file.display()));
        }
    }
    assert!(long.is_empty(), "functions longer than {LONGEST_FUNCTION} lines:\n{}", long.join("\n"));
}
