//! `spawn_app()`: a gateway and a consumer wired to a fresh database and a fresh queue prefix.

use std::net::SocketAddr;
use std::time::Duration;

use consumer::ConsumerConfig;
use diesel_async::RunQueryDsl;
use gateway::GatewayConfig;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use service_runtime::config::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Base URLs of the shared servers; override to point the tests elsewhere.
pub fn postgres_base() -> String {
    std::env::var("WARREN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Running {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

pub struct TestApp {
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub client: reqwest::Client,
    gateway: Option<Running>,
    consumer: Option<Running>,
    delivery: Vec<Running>,
    extra_env: Vec<(String, String)>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A running gateway and consumer; `extra_env` overrides their `WARREN_*` settings.
pub async fn spawn_app_with(extra_env: &[(&str, &str)]) -> TestApp {
    service_runtime::telemetry::init_for_tests();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("warren_test_{}", &suffix[..16]);
    let mut app = TestApp {
        db_url: format!("{}/{db_name}", postgres_base()),
        db_name,
        prefix: format!("test.{}", &suffix[..16]),
        // Bounded, so a request the app never answers fails its test instead of hanging CI.
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client"),
        gateway: None,
        consumer: None,
        delivery: Vec::new(),
        extra_env: extra_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    app.start_consumer().await;
    app.start_gateway().await;
    app
}

impl TestApp {
    fn settings(&self) -> Settings<'_> {
        Settings::from_lookup(move |name| {
            if let Some((_, value)) = self.extra_env.iter().find(|(k, _)| k == name) {
                // `{db}` stands for this app's database name (e.g. in a replica's URL), and
                // `{consumer}` for the running consumer's address (e.g. the schema registry).
                let consumer = self
                    .consumer
                    .as_ref()
                    .map(|running| running.address.to_string())
                    .unwrap_or_default();
                return Some(
                    value
                        .replace("{db}", &self.db_name)
                        .replace("{consumer}", &consumer),
                );
            }
            match name {
                "WARREN_DATABASE_URL" => Some(self.db_url.clone()),
                "WARREN_AMQP_URL" => Some(amqp_url()),
                "WARREN_AMQP_PREFIX" => Some(self.prefix.clone()),
                "WARREN_WRITE_BATCH_WAIT_MS" => Some("20".into()),
                "WARREN_SHUTDOWN_GRACE_MS" => Some("5000".into()),
                "WARREN_AUTH" => Some("off".into()),
                // Tests deliver to sinks on 127.0.0.1, and should not wait long for a change.
                "WARREN_DELIVERY_ALLOW_PRIVATE_SINKS" => Some("on".into()),
                "WARREN_DELIVERY_REFRESH_MS" => Some("100".into()),
                "WARREN_DELIVERY_RETRY_POLL_MS" => Some("50".into()),
                _ => None,
            }
        })
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.gateway.as_ref().expect("gateway running").address
        )
    }

    pub fn consumer_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.consumer.as_ref().expect("consumer running").address
        )
    }

    pub async fn start_gateway(&mut self) {
        let config = GatewayConfig::from_settings(&self.settings()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gateway::run(listener, config, async {
            let _ = stopped.await;
        }));
        self.gateway = Some(Running {
            address,
            stop,
            task,
        });
        self.wait_ready(&self.gateway_url("/readyz")).await;
    }

    pub async fn start_consumer(&mut self) {
        let config = ConsumerConfig::from_settings(&self.settings()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            consumer::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        self.consumer = Some(Running {
            address,
            stop,
            task,
        });
        self.wait_ready(&self.consumer_url("/readyz")).await;
    }

    /// Starts one more delivery worker (`consumer deliver`).
    pub async fn start_delivery(&mut self) {
        let config = ConsumerConfig::from_settings(&self.settings()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            consumer::deliver::worker::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        self.wait_ready(&format!("http://{address}/readyz")).await;
        self.delivery.push(Running {
            address,
            stop,
            task,
        });
    }

    /// Stops every delivery worker gracefully.
    pub async fn stop_delivery(&mut self) {
        for worker in self.delivery.drain(..) {
            worker.stop().await;
        }
    }

    /// A delivery worker's `/metrics` page.
    pub async fn delivery_metrics(&self) -> String {
        let address = <[Running]>::first(&self.delivery)
            .expect("a delivery worker")
            .address;
        self.page(&format!("http://{address}/metrics")).await
    }

    /// Sends `body` (if any) to the consumer's `path` with `method`; returns status and JSON.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method.parse().unwrap(), self.consumer_url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a subscription; returns its id and signing secret.
    pub async fn subscribe(&self, body: Value) -> (String, String) {
        let (status, created) = self.api("POST", "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn stop_consumer(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            consumer.stop().await;
        }
    }

    pub async fn stop_gateway(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
    }

    async fn wait_ready(&self, url: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = self.client.get(url).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// POSTs `body` to the ingest route with `content_type` and extra headers.
    pub async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.gateway_url("/v1/events"))
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// POSTs `events` as one batch (`application/cloudevents-batch+json`).
    pub async fn post_batch(&self, events: Vec<Value>) -> reqwest::Response {
        self.post(
            "application/cloudevents-batch+json",
            Value::Array(events).to_string(),
            &[],
        )
        .await
    }

    /// POSTs each of `events` as its own single-event request, all at once, with request ids
    /// `single-0`, `single-1`, ...; returns the statuses in order.
    pub async fn post_singles_at_once(&self, events: &[Value]) -> Vec<u16> {
        let requests = events.iter().enumerate().map(|(n, event)| async move {
            let request_id = format!("single-{n}");
            self.post(
                "application/cloudevents+json",
                event.to_string(),
                &[("x-request-id", request_id.as_str())],
            )
            .await
            .status()
            .as_u16()
        });
        futures_util::future::join_all(requests).await
    }

    pub async fn post_event(&self, event: &Value) -> reqwest::Response {
        self.post("application/cloudevents+json", event.to_string(), &[])
            .await
    }

    pub async fn db(&self) -> diesel_async::AsyncPgConnection {
        consumer::db::connect(&self.db_url).await.unwrap()
    }

    /// What a consumer writes through, on this app's database: a write pool and a copy pool of
    /// one connection each.
    pub fn storage(&self) -> consumer::write::store::Storage {
        storage_of(&self.db_url)
    }

    pub async fn count_rows(&self) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut db = self.db().await;
        diesel::sql_query("SELECT count(*) AS n FROM events")
            .get_result::<Count>(&mut db)
            .await
            .unwrap()
            .n
    }

    /// Polls until the table holds `expected` rows; panics after 15 s.
    pub async fn wait_for_rows(&self, expected: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let rows = self.count_rows().await;
            if rows == expected {
                return;
            }
            assert!(
                rows < expected,
                "more rows than expected: {rows} > {expected}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {rows} of {expected} rows after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn amqp(&self) -> Connection {
        Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap()
    }

    /// Messages ready in a queue (not counting unacknowledged ones).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        service_runtime::amqp::close(&connection, "done").await;
        queue.message_count()
    }

    /// Polls until `queue` holds `expected` ready messages; panics after 15 s.
    pub async fn wait_for_depth(&self, queue: &str, expected: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let depth = self.queue_depth(queue).await;
            if depth == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {depth}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The consumer's `/metrics` page.
    pub async fn consumer_metrics(&self) -> String {
        self.page(&self.consumer_url("/metrics")).await
    }

    /// The gateway's `/metrics` page.
    pub async fn gateway_metrics(&self) -> String {
        self.page(&self.gateway_url("/metrics")).await
    }

    async fn page(&self, url: &str) -> String {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one counter on the consumer's `/metrics` for this app's store queue.
    pub async fn consumer_counter(&self, name: &str) -> f64 {
        let text = self.consumer_metrics().await;
        let series = format!("{name}{{queue=\"{}\"}} ", self.topology().store_queue());
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn topology(&self) -> service_runtime::topology::Topology {
        service_runtime::topology::Topology::new(self.prefix.clone()).with_shards(self.shards())
    }

    /// `WARREN_STORE_SHARDS` as this app runs with it.
    pub fn shards(&self) -> u16 {
        self.extra_env
            .iter()
            .find(|(name, _)| name == "WARREN_STORE_SHARDS")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(1)
    }

    /// Changes a setting for the services started after this call.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.extra_env.retain(|(existing, _)| existing != name);
        self.extra_env.push((name.to_owned(), value.to_owned()));
    }

    /// Stops both services, deletes the queues and exchanges, and drops the database.
    pub async fn cleanup(mut self) {
        self.stop_delivery().await;
        self.stop_gateway().await;
        self.stop_consumer().await;
        remove_resources(&self.prefix, self.shards(), &self.db_name).await;
        self.db_name.clear();
    }
}

impl Drop for TestApp {
    /// A panicking test still removes what it created.
    fn drop(&mut self) {
        if self.db_name.is_empty() {
            return;
        }
        let (prefix, shards, db_name) = (self.prefix.clone(), self.shards(), self.db_name.clone());
        // Stop the services before deleting their queues, or a consumer would redeclare them.
        // Drop cannot await: abort the tasks and wait (bounded) until the runtime has ended them.
        // On a current-thread runtime they cannot run again once the test panicked, so the wait
        // ends at its deadline with nothing left to redeclare.
        let tasks: Vec<JoinHandle<()>> = [self.gateway.take(), self.consumer.take()]
            .into_iter()
            .flatten()
            .chain(self.delivery.drain(..))
            .map(|running| {
                let _ = running.stop.send(());
                running.task.abort();
                running.task
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !tasks.iter().all(JoinHandle::is_finished) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove_resources(&prefix, shards, &db_name));
            }
        })
        .join();
    }
}

async fn remove_resources(prefix: &str, shards: u16, db_name: &str) {
    let topology = service_runtime::topology::Topology::new(prefix.to_owned()).with_shards(shards);
    // The subscriptions a test left, so their queues go with it.
    let subscription_queues =
        consumer::cli::subscription_queues(&format!("{}/{db_name}", postgres_base()), &topology)
            .await
            .unwrap_or_default();
    // Bounded: a lapin future whose broker dropped the socket may never resolve, and the
    // database below must still go.
    let remove_from_broker = async {
        let Ok(connection) =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            return;
        };
        let _ = topology
            .remove_with(&connection, &subscription_queues, true)
            .await;
        service_runtime::amqp::close(&connection, "cleanup").await;
    };
    if tokio::time::timeout(Duration::from_secs(30), remove_from_broker)
        .await
        .is_err()
    {
        eprintln!("cleanup: the broker did not answer within 30 s; queues of {prefix} may be left");
    }
    if let Ok(mut admin) = consumer::db::connect(&format!("{}/postgres", postgres_base())).await {
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
        ))
        .execute(&mut admin)
        .await;
    }
}

/// A valid structured event with a unique id.
pub fn event(kind: &str) -> Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "source": "/tests",
        "type": kind,
        "data": {"n": 1}
    })
}

/// How many stored rows carry the dictionary ids of their own source and type text.
pub async fn rows_with_their_own_ids(db: &mut diesel_async::AsyncPgConnection) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM events \
         JOIN event_sources ON event_sources.id = events.source_id \
         JOIN event_types ON event_types.id = events.type_id \
         WHERE event_sources.source = events.source AND event_types.type = events.type",
    )
    .get_result::<Count>(db)
    .await
    .unwrap()
    .n
}

/// [`TestApp::storage`] for the database at `url`.
pub fn storage_of(url: &str) -> consumer::write::store::Storage {
    let timeout = Duration::from_secs(5);
    let pool =
        consumer::db::pool(url, 1, timeout, timeout, consumer::db::Plans::ServerChoice).unwrap();
    let copies = consumer::write::copy::pool(url, 1, timeout, timeout).unwrap();
    consumer::write::store::Storage::new(pool, copies)
}
