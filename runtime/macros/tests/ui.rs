//! The compiler errors of `#[derive(DomainEvent)]` misuse, checked with trybuild.

#[test]
fn misuse_is_explained_where_it_is_written() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
