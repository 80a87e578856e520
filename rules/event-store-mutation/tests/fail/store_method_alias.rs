//! Event-store mutation methods, also through `use … as` aliases and UFCS.
use nexus_runtime::store::delete_stream as purge;
use nexus_runtime::store::EventStore;

pub async fn forget(store: &impl EventStore, stream: &str) {
    store.delete_event(stream, 3).await.unwrap(); // error: [event-store-mutation]
    purge(store, stream).await.unwrap(); // error: [event-store-mutation]
    EventStore::overwrite_stream(store, stream, vec![]).await.unwrap(); // error: [event-store-mutation]
}
