//! `docker/docker-compose.yml` (and its TLS variant) read without Docker: valid against the
//! Compose specification's schema, and in agreement with the code and the files beside it. Every
//! setting a node needs beyond its defaults is set, every name it may be given exists, every
//! password comes from `docker/.env`, every service a node waits for has a health check, the
//! ports agree with nginx's configurations and Prometheus's, and the RabbitMQ definitions the
//! brokers load declare the topology the nodes are configured for.

use anyhow::{bail, ensure, Context};
use clap::CommandFactory;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
}

/// A compose file as JSON, with YAML's merge keys (`<<: *anchor`) applied, as Compose does.
fn compose_file(path: &str) -> anyhow::Result<Value> {
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&read(path)?)?;
    yaml.apply_merge()?;
    Ok(serde_json::to_value(yaml)?)
}

fn schema_errors(instance: &Value) -> anyhow::Result<Vec<String>> {
    let schema: Value = serde_json::from_str(&read("e2e-tests/schemas/compose-spec.json")?)?;
    let validator = jsonschema::validator_for(&schema).context("the compose schema")?;
    Ok(validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect())
}

#[test]
fn the_compose_files_follow_the_compose_specification() -> anyhow::Result<()> {
    for path in ["docker/docker-compose.yml", "docker/docker-compose.tls.yml"] {
        let errors = schema_errors(&compose_file(path)?)?;
        ensure!(errors.is_empty(), "{path}:\n{}", errors.join("\n"));
    }
    // The check itself finds mistakes.
    let mut broken = compose_file("docker/docker-compose.yml")?;
    broken["services"]["chat"]["restart"] = Value::from(3);
    broken["services"]["lb"]["helthcheck"] = Value::from("typo");
    ensure!(
        schema_errors(&broken)?.len() >= 2,
        "the schema missed a mistake"
    );
    Ok(())
}

/// The environment variable of every setting the node reads, with its default when it has one.
fn node_settings() -> BTreeMap<String, Option<String>> {
    chat_backend::Config::command()
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|value| value.to_string_lossy().into_owned());
            Some((env, default))
        })
        .collect()
}

/// `ENV` of the runtime image: `NAME=value` pairs, continued over lines.
fn image_environment() -> anyhow::Result<BTreeMap<String, String>> {
    let dockerfile = read("docker/Dockerfile")?;
    let start = dockerfile
        .find("\nENV ")
        .context("the Dockerfile sets no ENV")?;
    let mut pairs = BTreeMap::new();
    for line in dockerfile[start + 5..].lines() {
        let trimmed = line.trim().trim_end_matches('\\').trim();
        if let Some((name, value)) = trimmed.split_once('=') {
            pairs.insert(name.to_owned(), value.to_owned());
        }
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    Ok(pairs)
}

/// The variables compose interpolates (`${NAME}`, `${NAME:-default}`, `${NAME:?message}`), and
/// whether each is required.
fn interpolated(text: &str) -> BTreeMap<String, bool> {
    let mut found = BTreeMap::new();
    for piece in text.split("${").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let required = piece[name.len()..].starts_with(":?");
        *found.entry(name).or_insert(false) |= required;
    }
    found
}

/// `NAME=value` lines of an example file, commented out (`#NAME=`) or not.
fn example_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.strip_prefix('#').unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let is_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn environment_of(compose: &Value, service: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let environment = compose["services"][service]["environment"]
        .as_object()
        .with_context(|| format!("{service} has no environment map"))?;
    Ok(environment
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (name.clone(), value)
        })
        .collect())
}

#[test]
fn the_nodes_settings_in_compose_agree_with_the_code() -> anyhow::Result<()> {
    let settings = node_settings();
    ensure!(settings.len() > 50, "too few settings found: {settings:?}");
    let compose = compose_file("docker/docker-compose.yml")?;
    let chat = environment_of(&compose, "chat")?;
    let image = image_environment()?;
    let tls = compose_file("docker/docker-compose.tls.yml")?;

    // Everything set is a setting the node reads (RUST_LOG is tracing's).
    for name in chat
        .keys()
        .chain(image.keys())
        .chain(environment_of(&tls, "chat")?.keys())
    {
        ensure!(
            settings.contains_key(name) || name == "RUST_LOG",
            "{name} is set but the node reads no such setting"
        );
    }
    // A default that points at this machine means nothing in a container: such settings are set.
    for (name, default) in &settings {
        let local = default
            .as_deref()
            .is_some_and(|value| value.contains("127.0.0.1") || value.contains("localhost"));
        if local {
            ensure!(
                chat.contains_key(name) || image.contains_key(name),
                "{name} defaults to this machine ({default:?}) and compose does not set it"
            );
        }
    }
    ensure!(
        !chat.contains_key("CHAT_NODE_ID"),
        "a fixed CHAT_NODE_ID would give every replica one RabbitMQ queue"
    );
    // Every setting is in the example of docker/chat.env, and nothing else.
    let examples = example_settings(&read("docker/chat.env.example")?);
    let listed: BTreeSet<&String> = examples.keys().collect();
    let known: BTreeSet<&String> = settings.keys().collect();
    ensure!(
        listed == known,
        "docker/chat.env.example lacks {:?} and has unknown {:?}",
        known.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&known).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn every_password_comes_from_the_env_file_and_none_has_a_default() -> anyhow::Result<()> {
    let env_example = example_settings(&read("docker/.env.example")?);
    let mut variables = BTreeMap::new();
    for path in ["docker/docker-compose.yml", "docker/docker-compose.tls.yml"] {
        for (name, required) in interpolated(&read(path)?) {
            *variables.entry(name).or_insert(false) |= required;
        }
    }
    for (name, required) in &variables {
        let example = env_example
            .get(name)
            .with_context(|| format!("{name} is used by compose but not in docker/.env.example"))?;
        if *required {
            ensure!(
                example.is_empty(),
                "{name} is required, so its example must not be a working value"
            );
        }
    }
    for secret in [
        "POSTGRES_PASSWORD",
        "RABBITMQ_ERLANG_COOKIE",
        "RABBITMQ_CHAT_PASSWORD",
    ] {
        ensure!(
            variables.get(secret) == Some(&true),
            "{secret} must be required (${{{secret}:?…}}) wherever compose uses it"
        );
    }
    let compose = read("docker/docker-compose.yml")?;
    for line in compose.lines() {
        for secret in ["PASSWORD", "COOKIE"] {
            ensure!(
                !line.contains(&format!("{secret}:-")),
                "a secret with a default: {line}"
            );
        }
    }
    Ok(())
}

/// `text` with each `${…}` replaced by `x`, as if every variable were set.
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        out.push('x');
        rest = rest[start..].split_once('}').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out
}

/// The host names in a URL's authority (several with libpq's `host1:port,host2:port`).
fn hosts_of(url: &str) -> Vec<String> {
    let url = interpolate(url);
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    hosts
        .split(',')
        .map(|host| host.split(':').next().unwrap_or(host).to_owned())
        .collect()
}

/// The service named `host`, or the one with `host` as a network alias.
fn services_answering<'a>(compose: &'a Value, host: &str) -> Vec<(&'a String, &'a Value)> {
    let Some(services) = compose["services"].as_object() else {
        return Vec::new();
    };
    services
        .iter()
        .filter(|(name, service)| {
            name.as_str() == host
                || service["networks"]
                    .as_object()
                    .into_iter()
                    .flat_map(|networks| networks.values())
                    .filter_map(|network| network["aliases"].as_array())
                    .flatten()
                    .any(|alias| alias.as_str() == Some(host))
        })
        .collect()
}

/// Whether `waiter` starts only once `service` is healthy: directly, or through a one-off
/// service it waits for that itself waits for `service` to be healthy.
fn waits_until_healthy(compose: &Value, waiter: &str, service: &str) -> bool {
    let depends = &compose["services"][waiter]["depends_on"];
    if depends[service]["condition"] == "service_healthy" {
        return true;
    }
    depends.as_object().is_some_and(|depends| {
        depends.iter().any(|(one_off, condition)| {
            condition["condition"] == "service_completed_successfully"
                && compose["services"][one_off]["depends_on"][service]["condition"]
                    == "service_healthy"
        })
    })
}

#[test]
fn every_service_a_node_needs_is_health_checked_and_awaited() -> anyhow::Result<()> {
    let compose = compose_file("docker/docker-compose.yml")?;
    let chat = environment_of(&compose, "chat")?;
    let mut needed = Vec::new();
    for setting in ["DATABASE_URL", "AMQP_URL"] {
        let url = chat.get(setting).with_context(|| format!("no {setting}"))?;
        for host in hosts_of(url) {
            let services = services_answering(&compose, &host);
            ensure!(
                !services.is_empty(),
                "no service answers to {host} ({setting})"
            );
            needed.extend(services);
        }
    }
    ensure!(
        needed.len() >= 5,
        "the nodes need PostgreSQL twice and three brokers"
    );
    for (name, service) in needed {
        ensure!(
            service["healthcheck"]["test"].is_array(),
            "{name}, which the nodes need, has no health check"
        );
        ensure!(
            waits_until_healthy(&compose, "chat", name),
            "the chat nodes start before {name} is healthy"
        );
    }
    ensure!(
        compose["services"]["chat"]["healthcheck"]["test"].is_array(),
        "the chat nodes have no health check"
    );
    ensure!(
        waits_until_healthy(&compose, "lb", "chat"),
        "lb starts before the chat nodes are ready"
    );
    Ok(())
}

/// The port of an address or URL (`0.0.0.0:8080`, `http://127.0.0.1:8080/readyz`).
fn port_of(text: &str) -> anyhow::Result<u16> {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (_, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("no port in {text}"))?;
    Ok(port.parse()?)
}

/// The value of the one nginx directive line that starts with `directive`, in `conf`.
fn nginx_directive<'a>(conf: &'a str, directive: &str) -> anyhow::Result<Vec<&'a str>> {
    let values: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix(directive))
        .map(|rest| rest.trim().trim_end_matches(';'))
        .collect();
    ensure!(
        !values.is_empty(),
        "no `{directive}` in nginx's configuration"
    );
    Ok(values)
}

/// The container ports a service publishes (`"8080:80"`, `"${X:-443}:443"`).
fn published_targets(compose: &Value, service: &str) -> anyhow::Result<BTreeSet<u16>> {
    let ports = compose["services"][service]["ports"]
        .as_array()
        .with_context(|| format!("{service} publishes no port"))?;
    ports
        .iter()
        .map(|port| {
            let text = port.as_str().context("a port that is not a string")?;
            Ok(text.rsplit(':').next().unwrap_or(text).parse()?)
        })
        .collect()
}

#[test]
fn ports_agree_between_compose_the_image_nginx_and_prometheus() -> anyhow::Result<()> {
    let compose = compose_file("docker/docker-compose.yml")?;
    let tls = compose_file("docker/docker-compose.tls.yml")?;
    let image = image_environment()?;
    let chat = environment_of(&compose, "chat")?;
    let listen = port_of(
        image
            .get("CHAT_LISTEN")
            .context("no CHAT_LISTEN in the image")?,
    )?;
    let metrics = port_of(
        chat.get("CHAT_METRICS_LISTEN")
            .or(image.get("CHAT_METRICS_LISTEN"))
            .context("no CHAT_METRICS_LISTEN")?,
    )?;

    // The chat nodes' health check asks the port they listen on.
    let check = compose["services"]["chat"]["healthcheck"]["test"]
        .as_array()
        .context("no health check")?;
    let url = check
        .iter()
        .filter_map(Value::as_str)
        .find(|part| part.starts_with("http"))
        .context("the health check names no URL")?;
    ensure!(port_of(url)? == listen, "the health check asks {url}");

    for (conf_path, published) in [
        ("docker/nginx.conf", published_targets(&compose, "lb")?),
        ("docker/nginx-tls.conf", {
            let mut ports = published_targets(&compose, "lb")?;
            ports.extend(published_targets(&tls, "lb")?);
            ports
        }),
    ] {
        let conf = read(conf_path)?;
        // nginx sends to the chat service on the port the nodes listen on.
        for upstream in nginx_directive(&conf, "set $chat_node")? {
            ensure!(
                upstream == format!("chat:{listen}"),
                "{conf_path} sends to {upstream}, the nodes listen on {listen}"
            );
        }
        // It listens on exactly the ports compose publishes.
        let listens: BTreeSet<u16> = nginx_directive(&conf, "listen ")?
            .into_iter()
            .map(|value| value.split_whitespace().next().unwrap_or(value).parse())
            .collect::<Result<_, _>>()?;
        ensure!(
            listens == published,
            "{conf_path} listens on {listens:?}, compose publishes {published:?}"
        );
    }

    // Prometheus scrapes the port of the operator's listener.
    let prometheus: serde_yaml::Value = serde_yaml::from_str(&read("docker/ops/prometheus.yml")?)?;
    let jobs = prometheus["scrape_configs"]
        .as_sequence()
        .context("no scrape_configs")?;
    let chat_job = jobs
        .iter()
        .find(|job| job["job_name"].as_str() == Some("chat"))
        .context("no chat job")?;
    let scraped = chat_job["dns_sd_configs"][0]["port"]
        .as_u64()
        .context("no port")?;
    ensure!(
        scraped == u64::from(metrics),
        "Prometheus scrapes {scraped}, the nodes serve metrics on {metrics}"
    );
    ensure!(
        metrics != listen,
        "metrics must not share the clients' port"
    );
    Ok(())
}

#[test]
fn the_brokers_definitions_declare_the_nodes_topology() -> anyhow::Result<()> {
    let compose = compose_file("docker/docker-compose.yml")?;
    let chat = environment_of(&compose, "chat")?;
    let prefix = chat
        .get("CHAT_AMQP_PREFIX")
        .context("no CHAT_AMQP_PREFIX")?;
    let shards: u32 = chat
        .get("CHAT_INGEST_SHARDS")
        .context("no CHAT_INGEST_SHARDS")?
        .parse()?;
    let quorum = chat.get("CHAT_QUEUE_TYPE").map(String::as_str) == Some("quorum");

    // The definitions every broker mounts.
    let mut mounted = BTreeSet::new();
    for (name, _) in services_answering(&compose, "rabbitmq") {
        let volumes = compose["services"][name]["volumes"]
            .as_array()
            .context("a broker without volumes")?;
        for volume in volumes.iter().filter_map(Value::as_str) {
            if volume.contains(":/etc/rabbitmq/definitions.template.json") {
                mounted.insert(volume.split(':').next().unwrap_or(volume).to_owned());
            }
        }
    }
    ensure!(mounted.len() == 1, "the brokers mount {mounted:?}");
    let path = mounted.into_iter().next().context("no definitions")?;
    let definitions: Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(&root()).join("docker").join(&path),
    )?)?;

    let queues = definitions["queues"].as_array().context("no queues")?;
    for shard in 0..shards {
        let name = format!("{prefix}.ingest.{shard}");
        let queue = queues
            .iter()
            .find(|queue| queue["name"] == name.as_str())
            .with_context(|| format!("{path} does not declare {name}"))?;
        let kind = &queue["arguments"]["x-queue-type"];
        ensure!(
            (kind == "quorum") == quorum,
            "{name} is {kind}, the nodes declare CHAT_QUEUE_TYPE {:?}",
            chat.get("CHAT_QUEUE_TYPE")
        );
    }
    let extra = queues
        .iter()
        .filter_map(|queue| queue["name"].as_str())
        .filter_map(|name| name.strip_prefix(&format!("{prefix}.ingest.")))
        .filter_map(|shard| shard.parse::<u32>().ok())
        .any(|shard| shard >= shards);
    ensure!(!extra, "{path} declares more ingest shards than {shards}");

    // The nodes log in as a user whose rights are the prefix's names.
    let amqp = interpolate(chat.get("AMQP_URL").context("no AMQP_URL")?);
    let user = amqp
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(user, _)| user)
        .context("AMQP_URL names no user")?;
    let permissions = definitions["permissions"]
        .as_array()
        .context("no permissions")?;
    let granted = permissions
        .iter()
        .find(|permission| permission["user"] == user)
        .with_context(|| format!("{path} gives {user} no rights"))?;
    for right in ["configure", "write", "read"] {
        let pattern = granted[right].as_str().unwrap_or_default();
        if pattern != format!("^{prefix}\\.") {
            bail!("{user} may {right} {pattern:?}, not only the names of prefix {prefix}");
        }
    }
    Ok(())
}

/// `nginx -t` on a copy of a configuration whose certificate paths lead to a self-signed pair
/// made here.
fn nginx_accepts(conf_path: &str) -> anyhow::Result<()> {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("chat-nginx-{}", uuid::Uuid::new_v4().simple()));
    let certs = dir.join("live/chat");
    std::fs::create_dir_all(&certs)?;
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=chat", "-keyout"])
        .arg(certs.join("privkey.pem"))
        .arg("-out")
        .arg(certs.join("fullchain.pem"))
        .output()
        .context("openssl is missing")?;
    ensure!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let conf = read(conf_path)?.replace("/etc/letsencrypt", &dir.to_string_lossy());
    let copy = dir.join("nginx.conf");
    std::fs::write(&copy, conf)?;
    let nginx = ["nginx", "/usr/sbin/nginx"]
        .into_iter()
        .find(|candidate| Command::new(candidate).arg("-v").output().is_ok())
        .context("nginx is missing: apt-get install nginx")?;
    let checked = Command::new(nginx)
        .arg("-t")
        .arg("-c")
        .arg(&copy)
        .arg("-p")
        .arg(&dir)
        .args(["-e", "/dev/stderr"])
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        checked.status.success(),
        "nginx -t {conf_path}: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

#[test]
fn nginx_accepts_the_plain_and_the_tls_configuration() -> anyhow::Result<()> {
    nginx_accepts("docker/nginx.conf")?;
    nginx_accepts("docker/nginx-tls.conf")
}
