//! Compile tests of `#[locked]`: `ui/pass/*.rs` must compile, `ui/fail/*.rs` must fail with the
//! `.stderr` next to them. Regenerate those with
//! `TRYBUILD=overwrite cargo test -p deadbolt-macros --test ui`, then read the diff. The run-time
//! behaviour is tested in `deadbolt`'s `tests/macros.rs`.
//!
//! The passing cases are modules of this test binary, not trybuild cases: with only failing cases
//! trybuild checks all of them in one cargo run without generating code, while a single passing
//! case makes it build every dependency and then every fixture one at a time. Their `main` is
//! never called, and nothing runs their functions (they cannot reach Redis).

// The fixtures were written as crates of their own: this crate's stricter lints do not apply.
#[allow(unreachable_pub, clippy::mixed_attributes_style)]
#[path = "ui/pass/control_flow.rs"]
mod control_flow;
#[path = "ui/pass/free_fn.rs"]
mod free_fn;
#[path = "ui/pass/guard_options.rs"]
mod guard_options;
#[path = "ui/pass/method_field_client.rs"]
mod method_field_client;
#[path = "ui/pass/templates.rs"]
mod templates;

#[test]
fn fail() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}

/// Each `ui/pass/*.rs` is one of the modules above, so that a new one cannot be forgotten.
#[test]
fn pass_fixtures_are_all_modules() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/pass");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .expect("tests/ui/pass")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|name| name.ends_with(".rs"))
        .collect();
    found.sort();
    let modules = [
        "control_flow.rs",
        "free_fn.rs",
        "guard_options.rs",
        "method_field_client.rs",
        "templates.rs",
    ];
    assert_eq!(
        found, modules,
        "add the new fixture as a module of tests/ui.rs"
    );
}
