//! Names that pass for one another are one name: user names are unique without regard to
//! case, public room names without regard to case, Unicode presentation forms and spacing; no
//! name may hold control, bidirectional or zero-width characters.

use e2e_tests::api::test_password;
use e2e_tests::{Api, TestEnv};
use serde_json::{json, Value};

/// Registers `username` (with [`test_password`]) and answers the reply.
async fn register(api: &Api, username: &str, display_name: Option<&str>) -> anyhow::Result<Value> {
    let mut body = json!({"username": username, "password": test_password(username)});
    if let Some(display_name) = display_name {
        body["display_name"] = json!(display_name);
    }
    let reply = api.post("/api/register", body).await?;
    Ok(json!({"status": reply.status, "code": reply.code(), "body": reply.body}))
}

/// Creates a room and answers (status, error code or the stored name).
async fn create_room(api: &Api, name: &str, visibility: &str) -> anyhow::Result<(u16, String)> {
    let reply = api
        .post(
            "/api/rooms",
            json!({"name": name, "visibility": visibility}),
        )
        .await?;
    let said = if reply.status == 201 {
        reply.body["name"].as_str().unwrap_or_default().to_owned()
    } else {
        reply.code().to_owned()
    };
    Ok((reply.status, said))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_names_are_unique_without_regard_to_case() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("names-users").await?;
    let anonymous = node.api();
    assert_eq!(
        register(&anonymous, "casehleid", None).await?["status"],
        201
    );
    for twin in ["CASEHLEID", "CaseHleid", "casehleiD"] {
        let refused = register(&anonymous, twin, None).await?;
        assert_eq!(
            (refused["status"].as_u64(), refused["code"].as_str()),
            (Some(409), Some("username_taken")),
            "{twin}"
        );
    }
    // Signing in, inviting and opening a conversation find the user in any case.
    let login = anonymous
        .post(
            "/api/login",
            json!({"username": "CaseHLEID", "password": test_password("casehleid")}),
        )
        .await?;
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.body["profile"]["username"], "casehleid");
    let ada = node.sign_in("ada").await?;
    let direct = ada
        .post("/api/direct", json!({"username": "CASEHLEID"}))
        .await?;
    assert_eq!(direct.status, 200, "{}", direct.body);
    assert_eq!(direct.body["name"], "ada & casehleid");
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_refuse_control_bidirectional_and_zero_width_characters() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("names-chars").await?;
    let anonymous = node.api();
    let ada = node.sign_in("ada").await?;
    let hidden = [
        "\u{202E}", "\u{202A}", "\u{2066}", "\u{2069}", "\u{200E}", "\u{200F}", "\u{061C}",
        "\u{200B}", "\u{200C}", "\u{200D}", "\u{2060}", "\u{FEFF}", "\u{1B}",
    ];
    for c in hidden {
        let at = format!("U+{:04X}", c.chars().next().map(u32::from).unwrap_or(0));
        let user = register(&anonymous, &format!("eve{c}"), None).await?;
        assert_eq!(user["code"], "invalid_username", "{at}");
        let display = register(&anonymous, "eve", Some(&format!("Ada{c} L."))).await?;
        assert_eq!(display["code"], "invalid_name", "{at}");
        ada.patch("/api/me", json!({"display_name": format!("Bob{c}")}))
            .await?
            .expect_error(400, "invalid_name")?;
        for visibility in ["public", "private"] {
            assert_eq!(
                create_room(&ada, &format!("lobby{c}"), visibility).await?,
                (400, "invalid_room_name".to_owned()),
                "{at} {visibility}"
            );
        }
    }
    // Nothing was created or changed by the refused requests.
    assert_eq!(ada.get("/api/me").await?.body["display_name"], "ada");
    assert_eq!(
        ada.get("/api/me/rooms").await?.body["rooms"],
        json!([]),
        "no room was created"
    );
    // Letters of any script and emoji are names like any other.
    assert_eq!(
        register(&anonymous, "zoe", Some("Zoë 🙂 עברית")).await?["status"],
        201
    );
    assert_eq!(create_room(&ada, "Café ☕", "public").await?.0, 201);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_room_names_are_unique_without_regard_to_case_forms_and_spaces() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node = env.start_node("names-rooms").await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;
    assert_eq!(
        create_room(&ada, "General Chat", "public").await?,
        (201, "General Chat".to_owned())
    );
    for twin in [
        "general chat",
        "GENERAL CHAT",
        " General Chat",
        "General Chat  ",
        "General   Chat",
        "\u{FF27}eneral Chat",
    ] {
        assert_eq!(
            create_room(&bob, twin, "public").await?,
            (409, "room_name_taken".to_owned()),
            "{twin:?}"
        );
    }
    assert_eq!(
        create_room(&bob, "General\u{200B} Chat", "public").await?,
        (400, "invalid_room_name".to_owned())
    );
    // Names are stored without their outer spaces.
    assert_eq!(
        create_room(&bob, "  Lobby  ", "public").await?,
        (201, "Lobby".to_owned())
    );
    // Private room names reveal nothing, so they need not be unique.
    assert_eq!(create_room(&bob, "general chat", "private").await?.0, 201);
    let found = bob.get("/api/rooms?q=general").await?;
    assert_eq!(found.body["rooms"].as_array().map(Vec::len), Some(1));
    node.stop().await?;
    Ok(())
}
