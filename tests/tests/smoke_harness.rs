//! The harness itself: a throwaway Postgres starts and answers; the agent binary builds.
#[test]
fn postgres_starts_and_agent_builds() {
    if !tests::have_root("postgres_starts_and_agent_builds") {
        return;
    }
    tests::fresh_database("harness_smoke");
    assert_eq!(tests::sql("harness_smoke", "SELECT 1"), "1");
    assert!(tests::agent_bin().is_file());
}
