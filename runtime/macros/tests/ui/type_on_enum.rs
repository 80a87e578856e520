use nexus_macros::DomainEvent;

#[derive(DomainEvent)]
#[event(type = "Order")]
enum OrderEvent {
    Placed,
}

fn main() {}
