//! Methods whose names merely resemble store mutations.
pub fn cache(cache: &mut Cache, ui: &mut Ui) {
    cache.delete_entry("events");
    cache.remove_event_listener("click");
    ui.update_events_panel();
    cache.delete_events_cache();
}
