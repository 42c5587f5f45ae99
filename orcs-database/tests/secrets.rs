//! Passwords in the database URL never reach an error or `Debug` output, and a connection that
//! fails says why at once (not only that a pool timed out).

use std::time::{Duration, Instant};

use orcs_database::{DatabaseConfig, DatabaseDriver};
use orcs_tests::services;

const SECRET: &str = "hunter2";

fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

fn refused(result: orcs_core::Result<DatabaseDriver>) -> String {
    let err = result.expect_err("the connection must fail");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "the password leaked: {text}");
    text
}

#[test]
fn debug_output_hides_the_password() {
    for url in [
        "postgres://app:hunter2@db.internal:5432/app",
        "postgresql://app:hunter2@db.internal/app?sslmode=disable",
        "postgres://db.internal/app?user=app&password=hunter2",
    ] {
        let debug = format!("{:?} {:#?}", DatabaseConfig::new(url), DatabaseConfig::new(url));
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }
}

#[test]
fn an_unreachable_server_says_why_without_the_password() {
    orcs_tests::run(async {
        let port = dead_port();
        for url in [
            format!("postgres://app:{SECRET}@127.0.0.1:{port}/app"),
            format!("postgres://127.0.0.1:{port}/app?user=app&password={SECRET}"),
        ] {
            let started = Instant::now();
            let text = refused(DatabaseDriver::connect(&url).await);
            assert!(text.contains("Connection refused"), "{text}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a refused connection should fail at once, not after the pool's timeout"
            );
        }
    });
}

#[test]
fn a_refused_login_says_why_without_the_password() {
    let Some(url) = services::postgres::database_url_or_skip() else { return };
    orcs_tests::run(async {
        // The test server may trust every login, so name a role and a database that do not exist.
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = host.split('/').next().expect("a host");
        let text = refused(
            DatabaseDriver::connect(&format!("{scheme}://orcs_nobody:{SECRET}@{host}/test")).await,
        );
        assert!(text.contains("orcs_nobody"), "{text}");
        let text = refused(
            DatabaseDriver::connect(&format!("{url}_orcs_no_such_db?password={SECRET}")).await,
        );
        assert!(text.contains("does not exist"), "{text}");
    });
}
