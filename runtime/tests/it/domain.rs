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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum LedgerEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
    Noted { text: String },
    Closed,
}

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Deposited { .. } => "Deposited",
            Self::Withdrawn { .. } => "Withdrawn",
            Self::Noted { .. } => "Noted",
            Self::Closed => "Closed",
        }
    }
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
