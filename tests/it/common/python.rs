//! The Python clients of the tests (docker-py, the official Daytona SDK)
//! live in one virtualenv, which `scripts/test.sh` creates.

use std::path::PathBuf;
use std::process::Command;

/// The Python of the tests' virtualenv (`target/py-venv`, or
/// `BENCHWARDEN_PY_VENV`), which `scripts/test.sh` creates with docker-py and
/// the official Daytona SDK. Panics, never skips, when `module` cannot be
/// imported there.
pub fn venv_python(module: &str) -> PathBuf {
    let venv = std::env::var_os("BENCHWARDEN_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv"));
    let python = venv.join("bin/python");
    let works = Command::new(&python).args(["-c", &format!("import {module}")]).output();
    if !works.is_ok_and(|output| output.status.success()) {
        panic!(
            "{} cannot import {module}: run scripts/test.sh, which creates the virtualenv \
             (python3 -m venv target/py-venv && target/py-venv/bin/pip install daytona docker); these tests never skip",
            python.display()
        );
    }
    python
}
