//! Reads the body of `tcc!`, checking names and keys as it goes:
//!
//! ```text
//! tcc! {
//!     (setting = expr;)*          settings: max_retries, retry, try_timeout,
//!                                 attempt_timeout, fail_fast, log, id
//!     service, ...                a value of a #[tcc_service] type, or
//!     "name" => clone(a, b)? {    an inline service: one expression a phase,
//!                                 with handles cloned into each attempt
//!         try_phase: expr,
//!         confirm: expr,
//!         cancel: expr,
//!     },
//! }
//! ```

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, LitStr, Token, braced};

use crate::errors::Errors;
use crate::suggest::nearest;

/// The settings `tcc!` accepts, each an orchestrator builder method.
pub(crate) const SETTINGS: [&str; 7] = [
    "max_retries",
    "retry",
    "try_timeout",
    "attempt_timeout",
    "fail_fast",
    "log",
    "id",
];

/// The keys of an inline service, in the order of `Inline::phases`.
pub(crate) const PHASES: [&str; 3] = ["try_phase", "confirm", "cancel"];

pub(crate) struct Orchestration {
    pub(crate) settings: Vec<Setting>,
    pub(crate) services: Vec<Service>,
    /// Expressions under an unknown or repeated key: not expanded, but kept
    /// so that, on error, the user's code is still checked and used.
    pub(crate) rejected: Vec<Expr>,
}

/// `key = value;`, the key one of [`SETTINGS`].
pub(crate) struct Setting {
    pub(crate) key: Ident,
    pub(crate) value: Expr,
}

pub(crate) enum Service {
    /// Any value whose type implements the service trait.
    Typed(Expr),
    /// `"name" => { try_phase: .., confirm: .., cancel: .. }`.
    Inline(Box<Inline>),
}

pub(crate) struct Inline {
    pub(crate) name: LitStr,
    /// The names of `clone(a, b)`: cloned into the service, then into the
    /// future of every attempt.
    pub(crate) clones: Vec<Ident>,
    /// The expressions of Try, Confirm and Cancel, in that order.
    pub(crate) phases: [Expr; 3],
}

pub(crate) fn orchestration(input: ParseStream, errors: &mut Errors) -> syn::Result<Orchestration> {
    let mut rejected = Vec::new();
    let mut settings: Vec<Setting> = Vec::new();
    while is_setting(input) {
        let setting = setting(input, errors)?;
        if let Some(first) = settings.iter().find(|s| s.key == setting.key) {
            errors.error_spanned_by(
                &setting.key,
                format_args!("setting `{}` is given twice", first.key),
            );
        }
        settings.push(setting);
    }

    let mut services = Vec::new();
    let mut names: Vec<String> = Vec::new();
    while !input.is_empty() {
        if is_setting(input) {
            let key: Ident = input.fork().parse()?;
            errors.error_spanned_by(&key, "settings must come before the services");
            setting(input, errors)?;
            continue;
        }
        let (service, needs_comma) = if input.peek(LitStr) && input.peek2(Token![=>]) {
            let inline = inline(input, errors, &mut rejected)?;
            let name = inline.name.value();
            if names.contains(&name) {
                errors.error_spanned_by(
                    &inline.name,
                    format_args!(
                        "two services are named {:?}; service names must be unique",
                        name
                    ),
                );
            }
            names.push(name);
            (Service::Inline(Box::new(inline)), false)
        } else {
            (Service::Typed(input.parse()?), true)
        };
        services.push(service);
        if input.is_empty() {
            break;
        }
        if needs_comma {
            input.parse::<Token![,]>()?;
        } else {
            let _: Option<Token![,]> = input.parse()?;
        }
    }
    if settings.iter().any(|s| s.key == "log") {
        for service in &services {
            if let Service::Inline(inline) = service {
                errors.error_spanned_by(
                    &inline.name,
                    "an inline service cannot join a durable transaction (one with `log = ..`): it could not be rebuilt after a crash; list a value of a type that implements `tcc::Recoverable` instead",
                );
            }
        }
    }
    if services.is_empty() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "tcc! has no services; list at least one, such as `tcc! { flight, hotel }`",
        ));
    }
    Ok(Orchestration {
        settings,
        services,
        rejected,
    })
}

/// `ident =`, but not `ident ==` nor `ident =>`.
fn is_setting(input: ParseStream) -> bool {
    input.peek(Ident)
        && input.peek2(Token![=])
        && !input.peek2(Token![==])
        && !input.peek2(Token![=>])
}

fn setting(input: ParseStream, errors: &mut Errors) -> syn::Result<Setting> {
    let key: Ident = input.parse()?;
    input.parse::<Token![=]>()?;
    let value: Expr = input.parse()?;
    input.parse::<Token![;]>()?;
    let name = key.to_string();
    if !SETTINGS.contains(&name.as_str()) {
        let message = match nearest(&name, &SETTINGS, 3) {
            Some(near) => format!("unknown setting `{name}`; did you mean `{near}`?"),
            None => format!(
                "unknown setting `{name}`; the settings are `max_retries`, `retry`, `try_timeout`, `attempt_timeout`, `fail_fast`, `log` and `id`"
            ),
        };
        errors.error_spanned_by(&key, message);
    }
    Ok(Setting { key, value })
}

fn inline(
    input: ParseStream,
    errors: &mut Errors,
    rejected: &mut Vec<Expr>,
) -> syn::Result<Inline> {
    let name: LitStr = input.parse()?;
    input.parse::<Token![=>]>()?;
    if name.value().is_empty() {
        errors.error_spanned_by(&name, "a service name must not be empty");
    }
    let clones = clones(input, errors)?;
    let body;
    braced!(body in input);
    let mut phases: [Option<(Ident, Expr)>; 3] = Default::default();
    // A misspelt key already explains why its phase is missing.
    let mut suggested = Vec::new();
    while !body.is_empty() {
        // `parse_any` so that `try:` reads as a key, to suggest `try_phase`.
        let key = Ident::parse_any(&body)?;
        body.parse::<Token![:]>()?;
        let value: Expr = body.parse()?;
        let name_of_key = key.to_string();
        match PHASES.iter().position(|phase| *phase == name_of_key) {
            Some(i) if phases[i].is_some() => {
                errors.error_spanned_by(&key, format_args!("phase `{name_of_key}` is given twice"))
            }
            Some(i) => phases[i] = Some((key, value)),
            None => {
                let message = match nearest(&name_of_key, &PHASES, 3) {
                    Some(near) => {
                        suggested.push(near);
                        format!("unknown phase `{name_of_key}`; did you mean `{near}`?")
                    }
                    None => format!(
                        "unknown phase `{name_of_key}`; the phases are `try_phase`, `confirm` and `cancel`"
                    ),
                };
                errors.error_spanned_by(&key, message);
                rejected.push(value);
            }
        }
        if body.is_empty() {
            break;
        }
        body.parse::<Token![,]>()?;
    }
    let missing: Vec<String> = PHASES
        .iter()
        .zip(&phases)
        .filter(|(phase, given)| given.is_none() && !suggested.contains(phase))
        .map(|(phase, _)| format!("`{phase}`"))
        .collect();
    if let Some((last, rest)) = missing.split_last() {
        let list = match rest {
            [] => last.clone(),
            _ => format!("{} or {last}", rest.join(", ")),
        };
        let first = missing
            .first()
            .map(|m| m.trim_matches('`'))
            .unwrap_or_default();
        errors.error_spanned_by(
            &name,
            format_args!(
                "inline service {:?} has no {list} phase; add `{first}: <future>` to its block",
                name.value(),
            ),
        );
    }
    let [try_phase, confirm, cancel] = phases;
    let placeholder = || syn::parse_quote!(());
    Ok(Inline {
        name,
        clones,
        phases: [
            try_phase.map_or_else(placeholder, |(_, e)| e),
            confirm.map_or_else(placeholder, |(_, e)| e),
            cancel.map_or_else(placeholder, |(_, e)| e),
        ],
    })
}

/// `clone(a, b)` before an inline service's block, if present.
fn clones(input: ParseStream, errors: &mut Errors) -> syn::Result<Vec<Ident>> {
    if !(input.peek(Ident) && input.peek2(syn::token::Paren)) {
        return Ok(Vec::new());
    }
    let keyword: Ident = input.parse()?;
    if keyword != "clone" {
        errors.error_spanned_by(
            &keyword,
            format_args!(
                "expected `clone(..)` or the service's `{{ .. }}` block, found `{keyword}`"
            ),
        );
    }
    let list;
    syn::parenthesized!(list in input);
    let names = list.parse_terminated(Ident::parse, Token![,])?;
    let mut clones: Vec<Ident> = Vec::new();
    for name in names {
        if clones.contains(&name) {
            errors.error_spanned_by(&name, format_args!("`{name}` is cloned twice"));
        } else {
            clones.push(name);
        }
    }
    Ok(clones)
}
