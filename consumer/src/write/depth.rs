//! The store queues' depth as the consumer sees it: `warren_consumer_store_queue_messages{queue}`,
//! ready messages per store queue (per shard with `WARREN_STORE_SHARDS`), so a dashboard shows a
//! shard that falls behind without RabbitMQ's per-queue metrics switched on. Every consumer
//! reports the same figure: aggregate with `max by (queue)`.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;

/// How often the depth is read: a passive declare per queue, a few bytes each.
const EVERY: Duration = Duration::from_secs(5);

/// Reads each queue's depth every [`EVERY`] on `channel` (its own) until `stop` fires or the
/// channel fails (the session then ends and a new one starts another reader).
pub async fn report(channel: Channel, queues: Vec<String>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        for queue in &queues {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(found) => {
                    metrics::gauge!("warren_consumer_store_queue_messages", "queue" => queue.clone())
                        .set(f64::from(found.message_count()));
                }
                // A queue deleted meanwhile closes the channel; the next session starts afresh.
                Err(_) => return,
            }
        }
    }
    let _ = channel.close(200, "consumer session ended".into()).await;
}
