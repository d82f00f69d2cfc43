//! The storage test suite, written once and run on both backends.
//!
//! Every case is an `async fn(&TestDb)`; `suite!` turns each into a
//! `sqlite::<case>` and a `postgres::<case>` test, each on a fresh database,
//! so they run in parallel. The PostgreSQL variants need `WEFT_TEST_PG_URL`
//! (`eval "$(bash .ci/start-postgres.sh)"`); without it they print why they
//! skip, and with `WEFT_E2E=1` they fail instead.
#![allow(clippy::unwrap_used)]

mod common;

mod audit;
mod auth_policy;
mod concurrency;
mod dns;
mod keys;
mod nodes;
mod recordings;
mod registration;
mod schema;
mod ssh;
mod users;

macro_rules! suite {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = crate::common::TestDb::sqlite();
                    crate::$module::$case(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = crate::common::TestDb::postgres(stringify!($case)).await else {
                        return;
                    };
                    crate::$module::$case(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

suite!(
    recordings::ssh_recordings_are_stored_listed_in_pages_and_outlive_their_node,
    users::migrations_run_once_and_data_survives_reopening,
    users::users_are_created_read_updated_and_deleted,
    users::bad_user_input_is_refused_with_the_offending_value,
    users::an_idp_login_replaces_the_groups_and_records_when,
    registration::a_one_off_key_registers_exactly_one_node,
    registration::bad_pre_auth_keys_are_refused_and_not_counted,
    registration::tagged_ephemeral_keys_and_key_lifetimes_apply_to_nodes,
    registration::a_duplicate_node_key_is_refused,
    registration::a_known_machine_reregisters_in_place,
    registration::hostnames_become_unique_dns_labels,
    registration::a_full_pool_is_reported_and_released_addresses_are_reused,
    nodes::nodes_are_found_by_id_key_and_address,
    nodes::unknown_nodes_are_named_in_errors,
    nodes::status_online_and_last_seen_are_recorded,
    nodes::node_keys_rotate_and_expire,
    nodes::renames_and_tags_change_names_and_ownership,
    nodes::ephemeral_gc_selects_only_offline_ephemeral_nodes_past_grace,
    keys::pre_auth_keys_are_listed_validated_and_revoked,
    keys::api_keys_verify_expire_and_store_only_a_hash,
    auth_policy::an_approved_login_registers_its_node,
    auth_policy::logins_can_be_rejected_expire_and_are_cleaned_up,
    auth_policy::pending_logins_are_counted_and_only_pending_ones_deleted,
    auth_policy::policies_are_versioned,
    audit::audit_entries_are_appended_and_paged_newest_first,
    dns::dns_settings_start_empty_are_replaced_whole_and_survive_reopening,
    dns::stored_dns_settings_that_do_not_parse_are_reported_as_corrupt,
    ssh::ssh_approvals_are_found_within_their_period_replaced_and_swept,
    ssh::ssh_approvals_that_do_not_add_up_are_refused,
    ssh::ssh_approvals_are_revoked_by_user_node_or_all,
    ssh::ssh_approvals_go_with_their_user_and_node,
    ssh::ssh_approvals_end_when_the_node_is_expired_or_changes_owner,
    concurrency::concurrent_registrations_never_share_an_address_or_name,
    concurrency::a_one_off_key_wins_only_one_race,
    concurrency::two_servers_with_the_same_seed_still_allocate_uniquely,
);
