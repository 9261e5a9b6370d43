//! The per-server lock in Postgres, through the store itself: what a deploy
//! reads under it, and what an abandoned wait leaves behind.

use std::time::Duration;

use infra_service::config::PostgresUrl;
use infra_service::store::Store;

use crate::helpers::*;

const ADDRESS: &str = "203.0.113.7";
const PORT: u16 = 22;
const KEY: &str = "203.0.113.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheLockTest";

/// A store of its own (its own pools) on the test's database, migrated.
async fn store(db: &TestDb) -> Store {
    let url = PostgresUrl::parse(db.url()).expect("postgres url");
    let store = Store::connect_lazy(&url, 4);
    store.migrate().await.expect("migrate");
    store
}

/// The second deploy to a new address waits for the first, which pins the
/// host key it met and releases: the second must see that pin, though it
/// began waiting before the pin existed.
#[tokio::test]
async fn a_pin_committed_while_waiting_for_the_lock_is_read_under_it() {
    let db = TestDb::new().await;
    let first = store(&db).await;
    let second = store(&db).await;
    let (held, pinned) = first.lock_deploy_target(ADDRESS, PORT).await.unwrap();
    assert_eq!(pinned, None);

    let waiter = tokio::spawn(async move { second.lock_deploy_target(ADDRESS, PORT).await });
    let blocked = eventually(Duration::from_secs(10), || async {
        (db.advisory_lock_waiters().await > 0 || waiter.is_finished()).then_some(())
    })
    .await;
    assert!(
        blocked.is_some() && !waiter.is_finished(),
        "the lock did not make the second wait"
    );
    first
        .pin_address_host_key(ADDRESS, PORT, KEY)
        .await
        .unwrap();
    held.release().await;

    let (lock, pinned) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the lock was not handed on")
        .unwrap()
        .unwrap();
    assert_eq!(pinned.as_deref(), Some(KEY));
    lock.release().await;
}

/// A job cancelled while it waits for a busy server (shutdown, lost lease)
/// must not leave a session behind that takes the lock later and keeps it.
#[tokio::test]
async fn an_abandoned_wait_for_the_lock_does_not_keep_the_server_locked() {
    let db = TestDb::new().await;
    let (holder, quitter, next) = (store(&db).await, store(&db).await, store(&db).await);
    let held = holder.lock_server(ADDRESS).await.unwrap();

    // The quitter gives up once Postgres shows it waiting for the lock.
    let waiting = eventually(Duration::from_secs(10), || async {
        (db.advisory_lock_waiters().await > 0).then_some(())
    });
    let abandoned = tokio::select! {
        taken = quitter.lock_server(ADDRESS) => Err(taken.map(|_| ())),
        waited = waiting => Ok(waited),
    };
    assert!(
        matches!(abandoned, Ok(Some(()))),
        "the lock did not make the quitter wait: {abandoned:?}"
    );
    held.release().await;

    let taken = tokio::time::timeout(
        Duration::from_secs(10),
        next.lock_deploy_target(ADDRESS, PORT),
    )
    .await;
    let (lock, _) = taken
        .expect("the server stayed locked after the abandoned wait")
        .unwrap();
    lock.release().await;
}
