//! Reads the attribute's arguments and the impl block, taking the phase
//! attributes off its methods.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::{Attribute, Expr, ImplItem, Item, ItemImpl, LitStr, Meta, Signature};

use crate::errors::Errors;
use crate::suggest::nearest;

/// The arguments of `#[tcc_service(name = "...", max_retries = N)]`.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<LitStr>,
    pub(crate) max_retries: Option<Expr>,
}

/// One of the three phases a method can be marked with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Try,
    Confirm,
    Cancel,
}

impl Phase {
    pub(crate) const ALL: [Phase; 3] = [Phase::Try, Phase::Confirm, Phase::Cancel];

    /// The attribute's name, as the user writes it.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Phase::Try => "try_phase",
            Phase::Confirm => "confirm",
            Phase::Cancel => "cancel",
        }
    }

    /// Which phase `attr` marks, if it is a phase attribute: `#[confirm]`,
    /// `#[tcc::confirm]` or `#[::tcc::confirm]`.
    fn of(attr: &Attribute) -> Option<Phase> {
        let path = attr.path();
        let name = match path.segments.len() {
            1 if path.leading_colon.is_none() => &path.segments[0].ident,
            2 if path.segments[0].ident == "tcc" => &path.segments[1].ident,
            _ => return None,
        };
        Phase::ALL
            .into_iter()
            .find(|phase| name == phase.attribute())
    }

    /// The phase a single-word attribute such as `#[confrim]` most likely
    /// misspells.
    fn misspelt(attr: &Attribute) -> Option<Phase> {
        let name = attr.path().get_ident()?.to_string();
        let names = Phase::ALL.map(Phase::attribute);
        let near = nearest(&name, &names, 2)?;
        Phase::ALL
            .into_iter()
            .find(|phase| phase.attribute() == near)
    }
}

/// A method marked with a phase attribute.
pub(crate) struct PhaseMethod {
    pub(crate) phase: Phase,
    /// The phase attribute, for spans.
    pub(crate) attr: Attribute,
    /// The method's signature.
    pub(crate) sig: Signature,
}

/// An impl block under `#[tcc_service]`.
pub(crate) struct ServiceImpl {
    /// The impl block, every phase attribute stripped.
    pub(crate) item: ItemImpl,
    /// The phase methods, in order, duplicates included.
    pub(crate) phases: Vec<PhaseMethod>,
    /// Phases whose attribute was misspelt, already reported as such.
    pub(crate) misspelt: Vec<Phase>,
}

pub(crate) fn args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if args.name.is_some() {
                return Err(meta.error("`name` is given twice"));
            }
            let name: LitStr = meta.value()?.parse()?;
            if name.value().is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    "the service name must not be empty",
                ));
            }
            args.name = Some(name);
        } else if meta.path.is_ident("max_retries") {
            if args.max_retries.is_some() {
                return Err(meta.error("`max_retries` is given twice"));
            }
            let value: Expr = meta.value()?.parse()?;
            if let Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(n),
                ..
            }) = &value
            {
                n.base10_parse::<u32>()
                    .map_err(|_| syn::Error::new(n.span(), "`max_retries` must fit in a `u32`"))?;
            }
            args.max_retries = Some(value);
        } else {
            let path = meta.path.clone();
            let name = quote!(#path).to_string().replace(' ', "");
            return Err(meta.error(format_args!(
                "unknown argument `{name}`; #[tcc_service] takes `name = \"...\"` and `max_retries = N`"
            )));
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(tokens) {
        errors.push(error);
    }
    args
}

/// The impl block with its phase methods, or, for any other item, an error
/// and the item with every phase attribute stripped.
pub(crate) fn item(item: Item, errors: &mut Errors) -> Result<ServiceImpl, Box<Item>> {
    let mut item = match item {
        Item::Impl(item) => item,
        other => {
            errors.error_spanned_by(
                item_head(&other),
                "#[tcc_service] must be on an inherent impl block, such as `impl MyService { ... }`",
            );
            return Err(Box::new(other));
        }
    };
    let (phases, misspelt) = take_phases(&mut item, errors);
    if let Some((bang, trait_, for_)) = &item.trait_ {
        errors.error_spanned_by(
            quote!(#bang #trait_ #for_),
            "#[tcc_service] must be on an inherent impl block, not on a trait impl",
        );
        return Err(Box::new(Item::Impl(item)));
    }
    Ok(ServiceImpl {
        item,
        phases,
        misspelt,
    })
}

/// The tokens that name an item: its keyword and identifier where it has them.
fn item_head(item: &Item) -> TokenStream {
    match item {
        Item::Struct(s) => {
            let (token, ident) = (&s.struct_token, &s.ident);
            quote!(#token #ident)
        }
        Item::Enum(e) => {
            let (token, ident) = (&e.enum_token, &e.ident);
            quote!(#token #ident)
        }
        Item::Fn(f) => {
            let (token, ident) = (&f.sig.fn_token, &f.sig.ident);
            quote!(#token #ident)
        }
        Item::Trait(t) => {
            let (token, ident) = (&t.trait_token, &t.ident);
            quote!(#token #ident)
        }
        Item::Mod(m) => {
            let (token, ident) = (&m.mod_token, &m.ident);
            quote!(#token #ident)
        }
        other => quote!(#other),
    }
}

/// Takes the phase attributes, and misspellings of them, off every item of
/// the impl block.
fn take_phases(item: &mut ItemImpl, errors: &mut Errors) -> (Vec<PhaseMethod>, Vec<Phase>) {
    let mut phases = Vec::new();
    let mut misspelt = Vec::new();
    for impl_item in &mut item.items {
        let (attrs, method) = match impl_item {
            ImplItem::Fn(method) => (&mut method.attrs, true),
            ImplItem::Const(c) => (&mut c.attrs, false),
            ImplItem::Type(t) => (&mut t.attrs, false),
            ImplItem::Macro(m) => (&mut m.attrs, false),
            _ => continue,
        };
        let mut found = Vec::new();
        attrs.retain(|attr| {
            if let Some(phase) = Phase::of(attr) {
                found.push((phase, attr.clone()));
                return false;
            }
            // `#[confrim]` would leave rustc's "cannot find attribute" and our
            // "no #[confirm] method": say what it is instead.
            let Some(phase) = Phase::misspelt(attr) else {
                return true;
            };
            errors.error_spanned_by(
                attr.path(),
                format_args!(
                    "unknown attribute `{}`; did you mean #[{}]?",
                    attr.path()
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    phase.attribute(),
                ),
            );
            misspelt.push(phase);
            false
        });
        for (_, attr) in &found {
            if !matches!(attr.meta, Meta::Path(_)) {
                let name = attr.path().segments.last().map(|s| s.ident.to_string());
                errors.error_spanned_by(
                    &attr.meta,
                    format_args!("#[{}] takes no arguments", name.unwrap_or_default()),
                );
            }
        }
        let Some((phase, attr)) = found.first().cloned() else {
            continue;
        };
        if !method {
            errors.error_spanned_by(
                &attr,
                format_args!("#[{}] must be on an `async fn` method", phase.attribute()),
            );
            continue;
        }
        let ImplItem::Fn(method) = impl_item else {
            unreachable!("only methods reach here");
        };
        for (other, extra) in &found[1..] {
            errors.error_spanned_by(
                extra,
                format_args!(
                    "`{}` already has #[{}]; a method takes only one phase attribute, not #[{}] too",
                    method.sig.ident,
                    phase.attribute(),
                    other.attribute(),
                ),
            );
        }
        phases.push(PhaseMethod {
            phase,
            attr,
            sig: method.sig.clone(),
        });
    }
    (phases, misspelt)
}
