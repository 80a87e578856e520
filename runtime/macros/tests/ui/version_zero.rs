use nexus_macros::DomainEvent;

#[derive(DomainEvent)]
enum OrderEvent {
    #[event(version = 0)]
    Placed,
}

fn main() {}
