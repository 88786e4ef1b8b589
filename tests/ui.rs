//! Compile-time checks of the macros: every case in `ui-tests/` holds one
//! mistake and its `.stderr` the errors the user sees; the cases in
//! `ui-tests/pass/` compile and run.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui-tests/*.rs");
    cases.pass("ui-tests/pass/*.rs");
}
