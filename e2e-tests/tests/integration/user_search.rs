//! `GET /api/users?q=`: users found by the start of their user name or display name, for the
//! pickers of invitations and direct messages.

use e2e_tests::{Api, TestEnv};
use serde_json::{json, Value};

fn usernames(body: &Value) -> Vec<String> {
    body["users"]
        .as_array()
        .map(|users| {
            users
                .iter()
                .map(|user| user["username"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn found(api: &Api, query: &str) -> anyhow::Result<Vec<String>> {
    let answer = api.get(&format!("/api/users?q={query}")).await?;
    assert_eq!(answer.status, 200, "q={query}: {}", answer.body);
    Ok(usernames(&answer.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_found_by_the_start_of_either_name_in_any_case() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("user-search").await?;
    let ada = node.sign_in("ada").await?;
    node.sign_in("Ada.B").await?;
    node.sign_in("bob").await?;
    let aaron = node.sign_in("aaron").await?;
    let renamed = aaron
        .patch("/api/me", json!({"display_name": "Adalbert Aaron"}))
        .await?;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    node.sign_in("a_b").await?;

    // User names first (so the user named exactly that first), by user name; then display
    // names.
    assert_eq!(found(&ada, "ada").await?, ["ada", "Ada.B", "aaron"]);
    assert_eq!(found(&ada, "ADA").await?, ["ada", "Ada.B", "aaron"]);
    assert_eq!(found(&ada, "ada.").await?, ["Ada.B"]);
    assert_eq!(found(&ada, "adalb").await?, ["aaron"]);
    assert_eq!(found(&ada, "B").await?, ["bob"]);
    // A prefix, not a substring: "ob" is inside "bob" but starts nothing.
    assert!(found(&ada, "ob").await?.is_empty());
    // LIKE's wildcards are matched literally.
    assert!(found(&ada, "%25").await?.is_empty());
    assert!(found(&ada, "a%25").await?.is_empty());
    assert_eq!(found(&ada, "a_").await?, ["a_b"]);
    // Nothing typed finds nobody, not everybody.
    assert!(found(&ada, "").await?.is_empty());
    assert!(found(&ada, "%20%20").await?.is_empty());
    let without_q = ada.get("/api/users").await?;
    assert_eq!(without_q.status, 200);
    assert!(usernames(&without_q.body).is_empty());

    // Only what a picker shows: no avatar, status or anything else of the profile.
    let answer = ada.get("/api/users?q=bob").await?;
    let bob = &answer.body["users"][0];
    let mut fields: Vec<&String> = bob
        .as_object()
        .map(|fields| fields.keys().collect())
        .unwrap_or_default();
    fields.sort();
    assert_eq!(fields, ["display_name", "user_id", "username"]);
    assert_eq!(bob["display_name"], "bob");

    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_search_answers_twenty_at_most_and_refuses_what_no_name_can_be() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node = env.start_node("user-search-limits").await?;
    let ada = node.sign_in("ada").await?;
    for index in 0..22 {
        node.sign_in(&format!("member{index:02}")).await?;
    }
    let many = found(&ada, "member").await?;
    let first_twenty: Vec<String> = (0..20).map(|index| format!("member{index:02}")).collect();
    assert_eq!(many, first_twenty);
    // Display names too: twenty at most, user name matches first.
    for index in 0..22 {
        let member = node.sign_in(&format!("member{index:02}")).await?;
        let renamed = member
            .patch(
                "/api/me",
                json!({"display_name": format!("Ada fan {index:02}")}),
            )
            .await?;
        assert_eq!(renamed.status, 200, "{}", renamed.body);
    }
    let mixed = found(&ada, "ada").await?;
    assert_eq!(mixed.len(), 20, "{mixed:?}");
    assert_eq!(mixed.first().map(String::as_str), Some("ada"));

    // No name is over 32 characters: a longer prefix is a mistake, not a search.
    let longest = "m".repeat(32);
    assert!(found(&ada, &longest).await?.is_empty());
    ada.get(&format!("/api/users?q={longest}m"))
        .await?
        .expect_error(400, "bad_request")?;
    // 32 characters of four bytes each are 32 characters.
    let wide = "%F0%9F%98%80".repeat(32);
    assert!(found(&ada, &wide).await?.is_empty());
    ada.get("/api/users?q=a%00")
        .await?
        .expect_error(400, "bad_request")?;
    // Bytes that are not UTF-8 are read as replacement characters: no name has one.
    assert!(found(&ada, "%FF%FE").await?.is_empty());

    // Signed in only.
    node.api()
        .get("/api/users?q=ada")
        .await?
        .expect_error(401, "unauthenticated")?;
    node.stop().await?;
    Ok(())
}
