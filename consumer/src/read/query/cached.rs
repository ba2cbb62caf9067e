//! Prepared statements for the read queries diesel will not cache on its own.
//!
//! Diesel caches a statement's preparation unless its text holds raw SQL (`sql_query`, `sql`):
//! such text may be built without bound, so each run is parsed and planned again. The read API's
//! raw statements (the merged type keys, the keyset cursor) come from a small fixed set of texts,
//! one per combination of optional filters, so caching them by their text is bounded. Planning
//! is most of their cost on a table of daily partitions: the source shape's merged keys took
//! 3.1 ms (p50) planned each time and 0.5 ms prepared (docs/benchmarks.md, "Queries under ingest").

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A statement whose text comes from a bounded set, cached by its text like any other.
#[derive(Debug, Clone)]
pub struct CachedBySql<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for CachedBySql<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for CachedBySql<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for CachedBySql<Q> {
    type SqlType = Q::SqlType;
}
