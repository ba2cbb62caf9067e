//! The source and type dictionaries: writers that meet the same new names at once agree on
//! their ids, and every stored row carries the ids of its own names.

use consumer::write::key_ids::KeyIds;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use crate::helpers::spawn_app;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_meeting_the_same_new_names_at_once_get_the_same_ids() {
    let app = spawn_app().await;
    let names: Vec<String> = (0..200).map(|n| format!("/race/{n}")).collect();
    let kinds: Vec<String> = (0..200).map(|n| format!("race.{n}")).collect();
    let resolve = |reversed: bool| {
        let (names, kinds, url) = (names.clone(), kinds.clone(), app.db_url.clone());
        tokio::spawn(async move {
            let mut connection = consumer::db::connect(&url).await.unwrap();
            let key_ids = KeyIds::default();
            let order = |list: &[String]| {
                let mut list = list.to_vec();
                if reversed {
                    list.reverse();
                }
                list
            };
            let (names, kinds) = (order(&names), order(&kinds));
            let resolved = key_ids
                .resolve(
                    &mut connection,
                    names.iter().map(String::as_str),
                    kinds.iter().map(String::as_str),
                )
                .await
                .unwrap();
            // Asked again, the cache answers, with the same ids.
            let again = key_ids
                .resolve(
                    &mut connection,
                    names.iter().map(String::as_str),
                    kinds.iter().map(String::as_str),
                )
                .await
                .unwrap();
            names
                .iter()
                .map(|name| {
                    assert_eq!(resolved.source(name), again.source(name));
                    resolved.source(name).unwrap()
                })
                .chain(kinds.iter().map(|kind| {
                    assert_eq!(resolved.event_type(kind), again.event_type(kind));
                    resolved.event_type(kind).unwrap()
                }))
                .collect::<Vec<i32>>()
        })
    };
    let writers: Vec<_> = (0..4).map(|n| resolve(n % 2 == 1)).collect();
    let mut answers = Vec::new();
    for writer in writers {
        answers.push(writer.await.unwrap());
    }
    // Writers in reverse order listed the same names backwards: put them back.
    for (n, answer) in answers.iter_mut().enumerate() {
        if n % 2 == 1 {
            answer[..200].reverse();
            answer[200..].reverse();
        }
    }
    assert!(answers.windows(2).all(|pair| pair[0] == pair[1]));

    let mut db = app.db().await;
    for table in ["event_sources", "event_types"] {
        let rows: Count = diesel::sql_query(format!("SELECT count(*) AS count FROM {table}"))
            .get_result(&mut db)
            .await
            .unwrap();
        assert_eq!(rows.count, 200, "{table}");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stored_row_carries_the_ids_of_its_own_source_and_type() {
    let app = spawn_app().await;
    let batch: Vec<serde_json::Value> = (0..60)
        .map(|n| {
            serde_json::json!({"specversion": "1.0", "id": format!("k{n}"),
                "source": format!("/keys/{}", n % 7), "type": format!("keys.{}", n % 5)})
        })
        .collect();
    assert_eq!(app.post_batch(batch).await.status(), 202);
    app.wait_for_rows(60).await;
    let mut db = app.db().await;
    assert_eq!(crate::helpers::rows_with_their_own_ids(&mut db).await, 60);
    app.cleanup().await;
}
