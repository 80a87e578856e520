//! Payments: one per order (the payment's id is the order's), charged by the fulfilment saga.
//!
//! A charge up to [`AUTO_CAPTURE_LIMIT_CENTS`] is authorised and captured at once; a larger one
//! up to [`CHARGE_LIMIT_CENTS`] is authorised and waits for a review (`CapturePayment` or
//! `RejectPayment`), which the saga waits for no longer than its payment timeout; a larger one is
//! declined.

use nexus_runtime::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Charges up to this many cents are captured without a review.
pub const AUTO_CAPTURE_LIMIT_CENTS: u64 = 20_000;
/// Charges above this many cents are declined.
pub const CHARGE_LIMIT_CENTS: u64 = 50_000;

/// Where a payment is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Nothing charged yet.
    #[default]
    New,
    /// Authorised, waiting for its review.
    Authorized,
    /// Captured: the money is taken.
    Captured,
    /// The review rejected it.
    Rejected,
    /// Captured, then given back.
    Refunded,
    /// Authorised, then released without being captured.
    Voided,
}

/// An order's payment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Where it is.
    pub status: PaymentStatus,
    /// Who pays.
    pub customer: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

/// What can happen to a payment.
#[allow(
    clippy::enum_variant_names,
    reason = "event and command types are global names (schema subjects): the prefix keeps them unique"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[serde(tag = "type")]
pub enum PaymentEvent {
    /// The amount is held on the customer's account.
    PaymentAuthorized {
        /// Who pays.
        customer: String,
        /// How much, in cents.
        amount_cents: u64,
    },
    /// The amount was taken.
    PaymentCaptured {
        /// How much, in cents.
        amount_cents: u64,
    },
    /// The review rejected the payment; nothing was taken.
    PaymentRejected {
        /// Why.
        reason: String,
    },
    /// A captured amount was given back.
    PaymentRefunded {
        /// How much, in cents.
        amount_cents: u64,
    },
    /// An authorised amount was released without being taken.
    PaymentVoided,
}

/// What can be asked of a payment.
#[allow(
    clippy::enum_variant_names,
    reason = "event and command types are global names (schema subjects): the prefix keeps them unique"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum PaymentCommand {
    /// Charge the customer (nothing happens if this payment is already authorised or captured).
    ChargePayment {
        /// Who pays.
        customer: String,
        /// How much, in cents (at least 1).
        amount_cents: u64,
    },
    /// Approve an authorised payment under review: the amount is taken.
    CapturePayment,
    /// Reject an authorised payment under review.
    RejectPayment {
        /// Why.
        reason: String,
    },
    /// Give back what was taken, or release what is held (nothing happens if neither).
    RefundPayment,
}

/// Why a payment refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// A charge of nothing.
    #[error("a charge needs an amount")]
    NoAmount,
    /// A charge above [`CHARGE_LIMIT_CENTS`].
    #[error("declined: {amount_cents} cents is above the limit of {limit_cents}")]
    Declined {
        /// The amount asked for.
        amount_cents: u64,
        /// The limit.
        limit_cents: u64,
    },
    /// A review of a payment that is not waiting for one.
    #[error("the payment is {0:?}, not waiting for a review")]
    NotInReview(PaymentStatus),
    /// A charge of a payment that was rejected, refunded or voided.
    #[error("the payment is {0:?} and can no longer be charged")]
    Closed(PaymentStatus),
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn handle(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match (self.status, command) {
            (
                PaymentStatus::New,
                PaymentCommand::ChargePayment {
                    amount_cents: 0, ..
                },
            ) => Err(PaymentError::NoAmount),
            (
                PaymentStatus::New,
                PaymentCommand::ChargePayment {
                    customer,
                    amount_cents,
                },
            ) => {
                if *amount_cents > CHARGE_LIMIT_CENTS {
                    return Err(PaymentError::Declined {
                        amount_cents: *amount_cents,
                        limit_cents: CHARGE_LIMIT_CENTS,
                    });
                }
                let mut events = vec![PaymentEvent::PaymentAuthorized {
                    customer: customer.clone(),
                    amount_cents: *amount_cents,
                }];
                if *amount_cents <= AUTO_CAPTURE_LIMIT_CENTS {
                    events.push(PaymentEvent::PaymentCaptured {
                        amount_cents: *amount_cents,
                    });
                }
                Ok(events)
            }
            (
                PaymentStatus::Authorized | PaymentStatus::Captured,
                PaymentCommand::ChargePayment { .. },
            ) => Ok(vec![]),
            (status, PaymentCommand::ChargePayment { .. }) => Err(PaymentError::Closed(status)),
            (PaymentStatus::Authorized, PaymentCommand::CapturePayment) => {
                Ok(vec![PaymentEvent::PaymentCaptured {
                    amount_cents: self.amount_cents,
                }])
            }
            (PaymentStatus::Authorized, PaymentCommand::RejectPayment { reason }) => {
                Ok(vec![PaymentEvent::PaymentRejected {
                    reason: reason.clone(),
                }])
            }
            (status, PaymentCommand::CapturePayment | PaymentCommand::RejectPayment { .. }) => {
                Err(PaymentError::NotInReview(status))
            }
            (PaymentStatus::Captured, PaymentCommand::RefundPayment) => {
                Ok(vec![PaymentEvent::PaymentRefunded {
                    amount_cents: self.amount_cents,
                }])
            }
            (PaymentStatus::Authorized, PaymentCommand::RefundPayment) => {
                Ok(vec![PaymentEvent::PaymentVoided])
            }
            (_, PaymentCommand::RefundPayment) => Ok(vec![]),
        }
    }

    fn apply(&mut self, event: &PaymentEvent) {
        match event {
            PaymentEvent::PaymentAuthorized {
                customer,
                amount_cents,
            } => {
                self.status = PaymentStatus::Authorized;
                self.customer = customer.clone();
                self.amount_cents = *amount_cents;
            }
            PaymentEvent::PaymentCaptured { .. } => self.status = PaymentStatus::Captured,
            PaymentEvent::PaymentRejected { .. } => self.status = PaymentStatus::Rejected,
            PaymentEvent::PaymentRefunded { .. } => self.status = PaymentStatus::Refunded,
            PaymentEvent::PaymentVoided => self.status = PaymentStatus::Voided,
        }
    }
}

#[cfg(test)]
mod tests {
    use nexus_runtime::testing::AggregateTest;

    use super::*;

    fn charge(amount_cents: u64) -> PaymentCommand {
        PaymentCommand::ChargePayment {
            customer: "ada".into(),
            amount_cents,
        }
    }

    fn authorized(amount_cents: u64) -> PaymentEvent {
        PaymentEvent::PaymentAuthorized {
            customer: "ada".into(),
            amount_cents,
        }
    }

    #[test]
    fn a_small_charge_is_captured_at_once() {
        AggregateTest::<Payment>::given_no_history()
            .when(charge(900))
            .then([
                authorized(900),
                PaymentEvent::PaymentCaptured { amount_cents: 900 },
            ]);
    }

    #[test]
    fn a_large_charge_waits_for_its_review() {
        let payment = AggregateTest::<Payment>::given_no_history()
            .when(charge(30_000))
            .then([authorized(30_000)]);
        assert_eq!(payment.status, PaymentStatus::Authorized);
        AggregateTest::<Payment>::given([authorized(30_000)])
            .when(PaymentCommand::CapturePayment)
            .then([PaymentEvent::PaymentCaptured {
                amount_cents: 30_000,
            }]);
    }

    #[test]
    fn a_charge_above_the_limit_is_declined() {
        AggregateTest::<Payment>::given_no_history()
            .when(charge(CHARGE_LIMIT_CENTS + 1))
            .then_err(|e| matches!(e, PaymentError::Declined { .. }));
    }

    #[test]
    fn a_refund_gives_back_what_was_taken_or_releases_what_is_held() {
        AggregateTest::<Payment>::given([
            authorized(900),
            PaymentEvent::PaymentCaptured { amount_cents: 900 },
        ])
        .when(PaymentCommand::RefundPayment)
        .then([PaymentEvent::PaymentRefunded { amount_cents: 900 }]);
        AggregateTest::<Payment>::given([authorized(30_000)])
            .when(PaymentCommand::RefundPayment)
            .then([PaymentEvent::PaymentVoided]);
        AggregateTest::<Payment>::given_no_history()
            .when(PaymentCommand::RefundPayment)
            .then([]);
    }
}
