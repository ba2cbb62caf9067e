DROP TABLE delivery_replays;
DROP TABLE delivery_dead_letters;
DROP TABLE delivery_retries;
DROP TABLE subscriptions;
