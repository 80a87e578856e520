//! `#[derive(DomainEvent)]`: a domain event's stable type name and schema version, declared
//! beside the type instead of hand-written `event_type`/`event_version` methods.
//!
//! ```ignore
//! use nexus_runtime::DomainEvent;
//!
//! #[derive(Serialize, Deserialize, DomainEvent)]
//! #[serde(tag = "type")]
//! #[event(version = 2)]                        // every variant's default (else 1)
//! pub enum OrderEvent {
//!     OrderPlaced { customer: String },        // "OrderPlaced", version 2
//!     #[event(type = "order.confirmed", version = 3)]
//!     OrderConfirmed { total_cents: u64 },
//! }
//!
//! #[derive(Serialize, Deserialize, DomainEvent)]
//! #[event(type = "GiftCardRedeemed")]          // a struct is one event type (default: its name)
//! pub struct Redeemed { pub card: String }
//! ```
//!
//! The type name is what the schema registry and `nexus check` key on: it defaults to the
//! variant's (or struct's) Rust name, so renaming the Rust type renames the event unless
//! `type = "…"` pins it.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{Attribute, Data, DeriveInput, Error, LitInt, LitStr, parse_macro_input};

/// Implements `nexus_runtime::DomainEvent`; see the crate documentation for `#[event(…)]`.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// What one `#[event(…)]` attribute (or several on the same item) says.
#[derive(Default)]
struct EventAttr {
    event_type: Option<LitStr>,
    version: Option<u32>,
}

impl EventAttr {
    /// Reads every `#[event(…)]` of `attrs`; a key given twice is an error.
    fn parse(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut out = Self::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("type") {
                    if out.event_type.is_some() {
                        return Err(meta.error("`type` is given twice"));
                    }
                    let name: LitStr = meta.value()?.parse().map_err(|e: Error| {
                        Error::new(e.span(), "`type` takes a string: `type = \"OrderPlaced\"`")
                    })?;
                    if name.value().trim().is_empty() {
                        return Err(Error::new(name.span(), "an event type cannot be empty"));
                    }
                    out.event_type = Some(name);
                    Ok(())
                } else if meta.path.is_ident("version") {
                    if out.version.is_some() {
                        return Err(meta.error("`version` is given twice"));
                    }
                    let literal: LitInt = meta.value()?.parse().map_err(|e: Error| {
                        Error::new(e.span(), "`version` takes a whole number: `version = 2`")
                    })?;
                    let version: u32 = literal.base10_parse()?;
                    if version == 0 {
                        return Err(Error::new(
                            literal.span(),
                            "event versions start at 1 (the schema's major version)",
                        ));
                    }
                    out.version = Some(version);
                    Ok(())
                } else {
                    Err(meta.error(
                        "unknown `event` attribute; expected `type = \"…\"` or `version = N`",
                    ))
                }
            })?;
        }
        Ok(out)
    }
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let own = EventAttr::parse(&input.attrs)?;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let (type_body, version_body) = match &input.data {
        Data::Struct(_) => {
            let event_type = own
                .event_type
                .map_or_else(|| name.to_string(), |lit| lit.value());
            let version = own.version.unwrap_or(1);
            (quote! { #event_type }, quote! { #version })
        }
        Data::Enum(data) => {
            if let Some(lit) = &own.event_type {
                return Err(Error::new(
                    lit.span(),
                    "an enum holds one event type per variant: put `type = \"…\"` on a variant",
                ));
            }
            let default_version = own.version.unwrap_or(1);
            let mut types = Vec::new();
            let mut versions = Vec::new();
            for variant in &data.variants {
                let attr = EventAttr::parse(&variant.attrs)?;
                let ident = &variant.ident;
                let event_type = attr
                    .event_type
                    .map_or_else(|| ident.to_string(), |lit| lit.value());
                let version = attr.version.unwrap_or(default_version);
                types.push(quote! { Self::#ident { .. } => #event_type, });
                versions.push(quote! { Self::#ident { .. } => #version, });
            }
            if data.variants.is_empty() {
                (quote! { match *self {} }, quote! { match *self {} })
            } else {
                (
                    quote! { match self { #(#types)* } },
                    quote! { match self { #(#versions)* } },
                )
            }
        }
        Data::Union(union) => {
            return Err(Error::new(
                union.union_token.span(),
                "`DomainEvent` can be derived for a struct or an enum, not a union",
            ));
        }
    };
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::nexus_runtime::DomainEvent for #name #ty_generics #where_clause {
            fn event_type(&self) -> &'static str {
                #type_body
            }
            fn event_version(&self) -> u32 {
                #version_body
            }
        }
    })
}
