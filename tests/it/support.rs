//! Checks of the shared test support itself: the image runs, scopes clean
//! up after themselves, and the static-binary check tells static from
//! dynamic.

use crate::common::*;

#[tokio::test]
async fn the_test_image_runs_busybox_applets() {
    let scope = TestScope::new("image").await;
    let label = scope.label_arg();
    let output = docker_cli(&[
        "run",
        "--rm",
        "--label",
        &label,
        test_image(),
        "sh",
        "-c",
        "echo hello from $(basename $(readlink /bin/sleep)); test -d /tmp",
    ]);
    assert_eq!(output, "hello from busybox\n");
}

#[tokio::test]
async fn a_scope_removes_what_it_left_when_dropped() {
    let scope = TestScope::new("drop").await;
    let network = scope.network(&[]).await;
    let volume = scope.volume(&[]).await;
    scope.container(ContainerSpec::sleeping().network(&network).volume(&volume, "/data")).await;
    scope.exited(&[]).await;
    scope.project_network("default").await;
    scope.project_volume("data").await;
    let selectors = vec![scope.label_arg(), scope.project_label_arg()];
    let docker = connect().await;
    let before = leftovers(&docker, &selectors).await.unwrap();
    assert_eq!((before.containers.len(), before.networks.len(), before.volumes.len()), (2, 2, 2));

    drop(scope);

    let after = leftovers(&docker, &selectors).await.unwrap();
    assert!(after.is_empty(), "left behind: {after:?}");
}

#[test]
fn static_and_dynamic_binaries_are_told_apart() {
    let busybox = std::fs::read(busybox_path()).expect("read busybox");
    assert!(!elf_is_dynamic(&busybox));
    // Test binaries link against the system libc.
    let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(elf_is_dynamic(&this));
    assert!(!elf_is_dynamic(b"#!/bin/sh\necho not an ELF file at all, just a script\n"));
}
