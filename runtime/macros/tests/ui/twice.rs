use nexus_macros::DomainEvent;

#[derive(DomainEvent)]
#[event(version = 1)]
#[event(version = 2)]
struct Placed;

fn main() {}
