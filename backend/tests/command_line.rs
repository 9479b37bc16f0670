//! The `chat-server` binary as an operator starts it: a bad setting or a taken address stops it
//! at once, with a message naming what is wrong and a failing exit status, before it touches
//! PostgreSQL or RabbitMQ. (Building this test also builds the binary with the workspace's
//! test features, which the integration tests then run.)

use std::process::{Command, Output};

fn chat_server(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(args)
        .env_remove("CHAT_LISTEN")
        .env_remove("CHAT_METRICS_LISTEN")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
        .env("AMQP_URL", "amqp://127.0.0.1:1")
        .output();
    match output {
        Ok(output) => output,
        Err(error) => panic!("cannot run chat-server: {error}"),
    }
}

#[test]
fn a_malformed_listen_address_is_refused_with_the_option_named() {
    let output = chat_server(&["--listen", "not-an-address"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(stderr.contains("not-an-address"), "{stderr}");
}

#[test]
fn an_address_already_in_use_stops_the_node_with_a_failure() {
    let taken = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(error) => panic!("cannot bind a port to take: {error}"),
    };
    let address = match taken.local_addr() {
        Ok(address) => address.to_string(),
        Err(error) => panic!("no local address: {error}"),
    };
    let output = chat_server(&["--listen", &address, "--metrics-listen", "off"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(logs.contains("cannot listen"), "{logs}");
}
