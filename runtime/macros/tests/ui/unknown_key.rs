use nexus_macros::DomainEvent;

#[derive(DomainEvent)]
#[event(name = "Placed")]
struct Placed;

fn main() {}
