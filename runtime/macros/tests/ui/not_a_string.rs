use nexus_macros::DomainEvent;

#[derive(DomainEvent)]
#[event(type = OrderPlaced)]
struct Placed;

#[derive(DomainEvent)]
#[event(version = "2")]
struct Confirmed;

fn main() {}
