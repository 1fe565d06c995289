//! Integration tests of the aggregator library against real databases.

mod storage;
