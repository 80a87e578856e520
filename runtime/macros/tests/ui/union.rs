use nexus_macros::DomainEvent;

#[derive(DomainEvent)]
union Raw {
    a: u32,
}

fn main() {}
