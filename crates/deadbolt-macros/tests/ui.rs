//! Compile tests of `#[locked]`: `ui/pass/*.rs` must compile (they define locked functions but
//! cannot reach Redis, so nothing runs them); `ui/fail/*.rs` must fail with the `.stderr` next
//! to them. Regenerate those with `TRYBUILD=overwrite cargo test -p deadbolt-macros --test ui`,
//! then read the diff. The run-time behaviour is tested in `deadbolt`'s `tests/macros.rs`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
