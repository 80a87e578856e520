//! A small ledger aggregate whose state records every applied event, so a fold that applies an
//! event twice or skips one shows in the state.

use nexus_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub(crate) balance: i64,
    pub(crate) entries: Vec<i64>,
    pub(crate) notes: Vec<String>,
    pub(crate) closed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type")]
pub(crate) enum LedgerEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
    Noted { text: String },
    Closed,
}

/// The derive's defaults and overrides, on enums and structs.
#[test]
fn derived_event_types_and_versions_follow_their_attributes() {
    #[derive(Serialize, Deserialize, DomainEvent)]
    #[event(version = 2)]
    enum Versioned {
        Placed,
        #[event(type = "order.shipped", version = 5)]
        Shipped(u32),
        #[event(type = "order.cancelled")]
        Cancelled {
            reason: String,
        },
    }
    #[derive(Serialize, Deserialize, DomainEvent)]
    #[event(type = "GiftCardRedeemed", version = 3)]
    struct Redeemed {
        card: u8,
    }
    #[derive(Serialize, Deserialize, DomainEvent)]
    struct Plain;

    assert_eq!(LedgerEvent::Closed.event_type(), "Closed");
    assert_eq!(LedgerEvent::Noted { text: "x".into() }.event_version(), 1);
    assert_eq!(Versioned::Placed.event_type(), "Placed");
    assert_eq!(Versioned::Placed.event_version(), 2);
    assert_eq!(Versioned::Shipped(1).event_type(), "order.shipped");
    assert_eq!(Versioned::Shipped(1).event_version(), 5);
    let cancelled = Versioned::Cancelled {
        reason: "late".into(),
    };
    assert_eq!(cancelled.event_type(), "order.cancelled");
    assert_eq!(cancelled.event_version(), 2);
    let redeemed = Redeemed { card: 7 };
    assert_eq!(redeemed.event_type(), "GiftCardRedeemed");
    assert_eq!(redeemed.event_version(), 3);
    assert_eq!((Plain.event_type(), Plain.event_version()), ("Plain", 1));
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LedgerCommand {
    Deposit(i64),
    Withdraw(i64),
    Note(String),
    Close,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum LedgerError {
    #[error("amount must be positive, got {0}")]
    NotPositive(i64),
    #[error("balance {balance} does not cover {amount}")]
    Insufficient { balance: i64, amount: i64 },
    #[error("the ledger is closed")]
    Closed,
}

impl Aggregate for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = LedgerError;

    fn handle(&self, command: &LedgerCommand) -> Result<Vec<LedgerEvent>, LedgerError> {
        if self.closed {
            return Err(LedgerError::Closed);
        }
        match command {
            LedgerCommand::Deposit(amount) if *amount <= 0 => {
                Err(LedgerError::NotPositive(*amount))
            }
            LedgerCommand::Deposit(amount) => Ok(vec![LedgerEvent::Deposited { amount: *amount }]),
            LedgerCommand::Withdraw(amount) if *amount <= 0 => {
                Err(LedgerError::NotPositive(*amount))
            }
            LedgerCommand::Withdraw(amount) if *amount > self.balance => {
                Err(LedgerError::Insufficient {
                    balance: self.balance,
                    amount: *amount,
                })
            }
            LedgerCommand::Withdraw(amount) => Ok(vec![LedgerEvent::Withdrawn { amount: *amount }]),
            LedgerCommand::Note(text) => Ok(vec![LedgerEvent::Noted { text: text.clone() }]),
            LedgerCommand::Close => Ok(vec![LedgerEvent::Closed]),
        }
    }

    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Deposited { amount } => {
                self.balance += amount;
                self.entries.push(*amount);
            }
            LedgerEvent::Withdrawn { amount } => {
                self.balance -= amount;
                self.entries.push(-amount);
            }
            LedgerEvent::Noted { text } => self.notes.push(text.clone()),
            LedgerEvent::Closed => self.closed = true,
        }
    }
}
