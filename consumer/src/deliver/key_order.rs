//! Per-key order across the messages an ordered subscription's consumer handles at once.
//!
//! The consumer takes messages in queue order and handles many concurrently; each message
//! [`KeyOrder::enter`]s the line of every key it carries, in that same order, and a key's events
//! in a message wait until the previous message holding that key has settled it (delivered it,
//! or written it as a retry and committed that). The previous holder hands on whether the key is
//! now blocked (an event of it waits in the retries), so the next one writes its events behind
//! without asking the database. A key with no earlier holder in memory is settled in storage:
//! the caller asks the database whether it waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The lines of every key that some message in hand carries.
#[derive(Debug, Default)]
pub struct KeyOrder {
    /// Each key's last holder: its ticket number and how it will hand the key on.
    tails: Mutex<HashMap<String, (u64, oneshot::Receiver<bool>)>>,
    next_ticket: AtomicU64,
}

/// How a message learns that it may go on with a key.
#[derive(Debug)]
pub enum Turn {
    /// No earlier message in hand holds the key: whether it waits is in the database.
    Settled,
    /// An earlier message holds it: wait for its hand-over.
    After(oneshot::Receiver<bool>),
}

impl Turn {
    /// Whether the key is blocked when this message's turn comes (`Some(true)`: earlier events
    /// wait in the retries), `Some(false)` to go on, or `None` when the earlier holder gave up
    /// without settling (its message will be delivered again): this one must give up too, or
    /// it would overtake.
    pub async fn blocked(self, in_storage: impl FnOnce() -> bool) -> Option<bool> {
        match self {
            Turn::Settled => Some(in_storage()),
            Turn::After(handover) => handover.await.ok(),
        }
    }
}

/// A message's place in one key's line: how its turn comes, and how it hands the key on.
#[derive(Debug)]
pub struct Place {
    /// The key.
    pub key: String,
    /// How this message's turn with the key comes.
    pub turn: Turn,
    /// Given to the next message with the key.
    pub handover: Handover,
}

/// Hands a key on to the next message in its line. Dropping it without [`Handover::hand_on`]
/// gives the key up: the messages behind give up too (they are delivered again later, after
/// this one).
#[derive(Debug)]
pub struct Handover {
    order: Arc<KeyOrder>,
    number: u64,
    key: String,
    sender: Option<oneshot::Sender<bool>>,
}

impl KeyOrder {
    /// Takes a place at the end of each key's line (each key once); call in the order messages
    /// were received.
    pub fn enter(self: &Arc<Self>, keys: impl IntoIterator<Item = String>) -> Vec<Place> {
        let number = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let mut places: Vec<Place> = Vec::new();
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if places.iter().any(|place| place.key == key) {
                continue;
            }
            let (sender, receiver) = oneshot::channel();
            let turn = match tails.insert(key.clone(), (number, receiver)) {
                Some((_, earlier)) => Turn::After(earlier),
                None => Turn::Settled,
            };
            places.push(Place {
                key: key.clone(),
                turn,
                handover: Handover {
                    order: Arc::clone(self),
                    number,
                    key,
                    sender: Some(sender),
                },
            });
        }
        places
    }

    /// How many keys some message in hand holds.
    pub fn keys_held(&self) -> usize {
        self.tails.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Handover {
    /// Hands the key on once this message's retries for it are committed: `blocked` says
    /// whether an event of the key now waits in the retries.
    pub fn hand_on(mut self, blocked: bool) {
        if let Some(sender) = self.sender.take() {
            self.forget_if_last();
            let _ = sender.send(blocked);
        }
    }

    /// With nobody behind, forgets the key: the next message asks the database, which holds
    /// what this one wrote.
    fn forget_if_last(&self) {
        let mut tails = self.order.tails.lock().unwrap_or_else(|p| p.into_inner());
        if tails
            .get(&self.key)
            .is_some_and(|(number, _)| *number == self.number)
        {
            tails.remove(&self.key);
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if self.sender.is_some() {
            // Given up: the sender drops unsent, so whoever is behind gives up too.
            self.forget_if_last();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(order: &Arc<KeyOrder>, names: &[&str]) -> HashMap<String, Place> {
        order
            .enter(names.iter().map(|name| (*name).to_owned()))
            .into_iter()
            .map(|place| (place.key.clone(), place))
            .collect()
    }

    #[tokio::test]
    async fn a_key_waits_for_the_earlier_message_and_learns_whether_it_is_blocked() {
        let order = Arc::new(KeyOrder::default());
        let mut first = enter(&order, &["a", "b"]);
        let mut second = enter(&order, &["a", "c"]);
        let first_a = first.remove("a").unwrap();
        assert!(matches!(first_a.turn, Turn::Settled));
        assert!(matches!(second["c"].turn, Turn::Settled));
        let second_a = second.remove("a").unwrap();
        let handed = tokio::spawn(second_a.turn.blocked(|| panic!("asked the database")));
        tokio::task::yield_now().await;
        assert!(
            !handed.is_finished(),
            "went on before the earlier message settled"
        );
        first_a.handover.hand_on(true);
        assert_eq!(handed.await.unwrap(), Some(true));
        // b had nobody behind it: forgotten once handed on; a and c stay with the second.
        first.remove("b").unwrap().handover.hand_on(false);
        assert_eq!(order.keys_held(), 2);
        second_a.handover.hand_on(false);
        second.remove("c").unwrap().handover.hand_on(false);
        assert_eq!(order.keys_held(), 0);
        let third = enter(&order, &["a"]);
        assert!(matches!(third["a"].turn, Turn::Settled));
    }

    #[tokio::test]
    async fn a_message_that_gives_up_makes_those_behind_it_give_up() {
        let order = Arc::new(KeyOrder::default());
        let first = enter(&order, &["a"]);
        let mut second = enter(&order, &["a"]);
        drop(first);
        let place = second.remove("a").unwrap();
        assert_eq!(place.turn.blocked(|| false).await, None);
        drop(place.handover);
        assert_eq!(order.keys_held(), 0);
    }

    #[tokio::test]
    async fn a_key_carried_twice_in_one_message_takes_one_place() {
        let order = Arc::new(KeyOrder::default());
        let places = order.enter(["a".to_owned(), "a".to_owned()]);
        assert_eq!(places.len(), 1);
        for place in places {
            place.handover.hand_on(false);
        }
        assert_eq!(order.keys_held(), 0);
    }
}
