//! The routing table: which event types go to which exchange, with which routing key.

use std::fmt;

use super::sink::RoutedEvent;
use crate::event::RecordedEvent;

/// Why a routing rule is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The event type pattern is empty.
    #[error("event type pattern is empty")]
    EmptyPattern,
    /// The exchange name is empty or longer than AMQP allows.
    #[error("exchange name `{0}` must be 1 to 255 bytes")]
    InvalidExchange(String),
    /// The routing key template names an unknown placeholder or has an unclosed brace.
    #[error("routing key template `{template}` is invalid: {reason}")]
    InvalidRoutingKey {
        /// The template.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One part of a routing key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    EventType,
    AggregateType,
    AggregateId,
    SchemaVersion,
}

/// Where matching events go: an exchange and a routing key template.
///
/// The template may use `{event_type}`, `{aggregate_type}`, `{aggregate_id}` and
/// `{schema_version}`, e.g. `{aggregate_type}.{event_type}` gives `order.OrderPlaced`,
/// which topic bindings such as `order.*` select on.
#[derive(Clone, PartialEq, Eq)]
pub struct Route {
    exchange: String,
    template: String,
    parts: Vec<Part>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({} <- {})", self.exchange, self.template)
    }
}

impl Route {
    /// A route to `exchange` with the routing key `template`.
    pub fn new(
        exchange: impl Into<String>,
        template: impl Into<String>,
    ) -> Result<Self, RouteError> {
        let exchange = exchange.into();
        if exchange.is_empty() || exchange.len() > 255 {
            return Err(RouteError::InvalidExchange(exchange));
        }
        let template = template.into();
        let parts = parse_template(&template)?;
        Ok(Self {
            exchange,
            template,
            parts,
        })
    }

    /// The exchange.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key this route gives `event`.
    pub fn routing_key(&self, event: &RecordedEvent) -> String {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::EventType => key.push_str(&event.event_type),
                Part::AggregateType => key.push_str(event.stream.aggregate_type()),
                Part::AggregateId => key.push_str(event.stream.aggregate_id()),
                Part::SchemaVersion => key.push_str(&event.schema_version.to_string()),
            }
        }
        key
    }
}

fn parse_template(template: &str) -> Result<Vec<Part>, RouteError> {
    let invalid = |reason: String| RouteError::InvalidRoutingKey {
        template: template.to_owned(),
        reason,
    };
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| invalid("a `{` is never closed".into()))?;
        parts.push(match &after[..close] {
            "event_type" => Part::EventType,
            "aggregate_type" => Part::AggregateType,
            "aggregate_id" => Part::AggregateId,
            "schema_version" => Part::SchemaVersion,
            other => return Err(invalid(format!("unknown placeholder `{{{other}}}`"))),
        });
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(invalid("a `}` has no matching `{`".into()));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Event type patterns, each with a route; the first pattern that matches an event wins.
///
/// A pattern is an event type name in which `*` stands for any run of characters:
/// `OrderPlaced`, `Order*`, `*Cancelled`, `*`. Events no pattern matches are not routed.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    rules: Vec<(String, Route)>,
}

impl RoutingTable {
    /// An empty table, which routes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: events whose type matches `pattern` go to `exchange` with the routing key
    /// `routing_key` (a template, see [`Route`]).
    pub fn route(
        mut self,
        pattern: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Result<Self, RouteError> {
        let pattern = pattern.into();
        if pattern.is_empty() {
            return Err(RouteError::EmptyPattern);
        }
        self.rules
            .push((pattern, Route::new(exchange, routing_key)?));
        Ok(self)
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.rules
            .iter()
            .map(|(pattern, route)| (pattern.as_str(), route))
    }

    /// Every exchange some rule routes to, without duplicates, in rule order.
    pub fn exchanges(&self) -> Vec<&str> {
        let mut exchanges: Vec<&str> = Vec::new();
        for (_, route) in &self.rules {
            if !exchanges.contains(&route.exchange()) {
                exchanges.push(route.exchange());
            }
        }
        exchanges
    }

    /// The route of an event type, if some rule matches it.
    pub fn route_of(&self, event_type: &str) -> Option<&Route> {
        self.rules
            .iter()
            .find(|(pattern, _)| glob_match(pattern, event_type))
            .map(|(_, route)| route)
    }

    /// Where `event` goes, or `None` when no rule matches its type.
    pub fn resolve(&self, event: &RecordedEvent) -> Option<RoutedEvent> {
        self.route_of(&event.event_type).map(|route| RoutedEvent {
            exchange: route.exchange().to_owned(),
            routing_key: route.routing_key(event),
            event: event.clone(),
        })
    }
}

/// Whether `text` matches `pattern`, in which `*` matches any run of characters.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        // No `*` at all: the whole text must equal the pattern.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_literals_and_wildcards() {
        for (pattern, text, expected) in [
            ("OrderPlaced", "OrderPlaced", true),
            ("OrderPlaced", "OrderPlacedV2", false),
            ("Order*", "OrderPlaced", true),
            ("Order*", "Order", true),
            ("Order*", "PaymentTaken", false),
            ("*Cancelled", "OrderCancelled", true),
            ("*Cancelled", "CancelledOrder", false),
            ("*", "Anything", true),
            ("O*r*d", "OrderPlaced", true),
            ("O*r*d", "Ord", true),
            ("O*r*d", "Odr", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
        ] {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn templates_reject_unknown_placeholders_and_stray_braces() {
        assert!(Route::new("x", "{aggregate_type}.{event_type}").is_ok());
        assert!(matches!(
            Route::new("x", "{nope}"),
            Err(RouteError::InvalidRoutingKey { .. })
        ));
        assert!(matches!(
            Route::new("x", "{event_type"),
            Err(RouteError::InvalidRoutingKey { .. })
        ));
        assert!(matches!(
            Route::new("x", "a}b"),
            Err(RouteError::InvalidRoutingKey { .. })
        ));
        assert!(matches!(
            Route::new("", "k"),
            Err(RouteError::InvalidExchange(_))
        ));
    }

    #[test]
    fn first_matching_rule_wins() {
        let table = RoutingTable::new()
            .route("OrderCancelled", "alerts", "cancelled")
            .unwrap()
            .route("Order*", "orders", "{event_type}")
            .unwrap();
        assert_eq!(
            table.route_of("OrderCancelled").unwrap().exchange(),
            "alerts"
        );
        assert_eq!(table.route_of("OrderPlaced").unwrap().exchange(), "orders");
        assert!(table.route_of("PaymentTaken").is_none());
        assert_eq!(table.exchanges(), ["alerts", "orders"]);
    }
}
