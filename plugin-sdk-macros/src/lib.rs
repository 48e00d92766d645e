//! The `#[task]` attribute and the `export_plugin!` macro of
//! `fastworker-plugin-sdk`. Use them through that crate.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote, ToTokens};
use syn::{
    parse::Parser, punctuated::Punctuated, spanned::Spanned, Expr, FnArg, ItemFn, Lit, MetaNameValue, Pat, Path,
    ReturnType, Token, Type,
};

/// Declares a plain function as a fastworker task.
///
/// Options: `name = "..."`, `priority = "critical" | "high" | "normal" | "low"`,
/// `timeout = "30s"`, `retries = 3`, `retry_delay = "1s"`, and for periodic
/// tasks `every = "30s"` or `cron = "0 * * * *"`, with optional `runs = N`,
/// `until = "2027-01-01T00:00:00Z"`, `args = "[1, 2]"` and
/// `timezone = "Europe/Paris"`; for cluster-wide limits `rate = "20/s"`
/// (or `"600/m"`, `"5/h"`), with optional `burst = 10` (default: one
/// second's worth, at least 1), and `max_running = 4`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = syn::parse_macro_input!(item as ItemFn);
    match expand_task(attr.into(), &function) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#function #error).into()
        }
    }
}

/// Exports the listed tasks as this crate's plugin: `export_plugin!(add, tasks::resize);`.
#[proc_macro]
pub fn export_plugin(input: TokenStream) -> TokenStream {
    let paths = match Punctuated::<Path, Token![,]>::parse_terminated.parse(input) {
        Ok(paths) => paths,
        Err(error) => return error.to_compile_error().into(),
    };
    let renamed = |rename: fn(&syn::Ident) -> syn::Ident| {
        paths
            .iter()
            .map(|path| {
                let mut path = path.clone();
                let last = path.segments.last_mut().expect("a path has a last segment");
                last.ident = rename(&last.ident);
                path
            })
            .collect::<Vec<_>>()
    };
    let decls = renamed(decl_ident);
    let schemas = renamed(schema_ident);
    let metas = renamed(meta_ident);
    let loader = format_ident!("{}", abi_stable_shared::mangled_root_module_loader_name());
    quote! {
        #[doc(hidden)]
        pub fn __fastworker_plugin_root() -> ::fastworker_plugin_sdk::abi::PluginRef {
            static TASKS: &[::fastworker_plugin_sdk::abi::TaskDecl] = &[#(#decls),*];
            static SCHEMAS: &[::fastworker_plugin_sdk::__private::SchemaDecl] = &[#(#schemas),*];
            static META: &[::fastworker_plugin_sdk::__private::RStr<'static>] = &[#(#metas),*];
            ::fastworker_plugin_sdk::__private::plugin(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                TASKS,
                SCHEMAS,
                META,
            )
        }

        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub static #loader: ::fastworker_plugin_sdk::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased_root() -> ::fastworker_plugin_sdk::__private::abi_stable::library::RootModuleResult {
                ::fastworker_plugin_sdk::__private::abi_stable::library::__call_root_module_loader(
                    __fastworker_plugin_root,
                )
            }
            // SAFETY: `erased_root` returns the module built by `__fastworker_plugin_root`,
            // whose type is the one named here.
            unsafe {
                ::fastworker_plugin_sdk::__private::abi_stable::library::LibHeader::from_constructor::<
                    ::fastworker_plugin_sdk::abi::PluginRef,
                >(
                    erased_root,
                    ::fastworker_plugin_sdk::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    }
    .into()
}

fn decl_ident(task: &syn::Ident) -> syn::Ident {
    format_ident!("__fastworker_task_{}", task)
}

fn schema_ident(task: &syn::Ident) -> syn::Ident {
    format_ident!("__fastworker_schema_{}", task)
}

fn meta_ident(task: &syn::Ident) -> syn::Ident {
    format_ident!("__fastworker_meta_{}", task)
}

/// `T` of `Result<T, E>` (or of an alias such as `io::Result<T>`).
fn ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let syn::PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else { return None };
    args.args.iter().find_map(|arg| match arg {
        syn::GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    })
}

struct Options {
    name: Option<String>,
    priority: TokenStream2,
    timeout_ms: u64,
    retries: u32,
    retry_delay_ms: u64,
    /// The periodic schedule's fields as JSON members (`"every_ms":30000`).
    schedule: Vec<String>,
    /// The cluster-wide rate in runs per second (`rate = "20/s"`).
    rate: Option<f64>,
    /// The rate's burst (`burst = 10`).
    burst: Option<u64>,
    /// Runs at once across the cluster (`max_running = 4`).
    max_running: Option<u64>,
}

fn parse_options(attr: TokenStream2) -> syn::Result<Options> {
    let mut options = Options {
        name: None,
        priority: quote!(::fastworker_plugin_sdk::Priority::Normal),
        timeout_ms: 0,
        retries: 0,
        retry_delay_ms: 0,
        schedule: Vec::new(),
        rate: None,
        burst: None,
        max_running: None,
    };
    let mut periodic = false;
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    for pair in pairs {
        let key = pair.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
        let value = &pair.value;
        match key.as_str() {
            "name" => options.name = Some(string_lit(value)?),
            "priority" => {
                let text = string_lit(value)?;
                let variant = match text.to_ascii_lowercase().as_str() {
                    "critical" => quote!(Critical),
                    "high" => quote!(High),
                    "normal" => quote!(Normal),
                    "low" => quote!(Low),
                    _ => {
                        return Err(syn::Error::new(
                            value.span(),
                            "priority is one of \"critical\", \"high\", \"normal\", \"low\"",
                        ))
                    }
                };
                options.priority = quote!(::fastworker_plugin_sdk::Priority::#variant);
            }
            "timeout" => options.timeout_ms = duration_ms(value)?,
            "retry_delay" => options.retry_delay_ms = duration_ms(value)?,
            "retries" => options.retries = int_lit(value)? as u32,
            "every" | "cron" if periodic => {
                return Err(syn::Error::new(pair.path.span(), "a task has one schedule: `every` or `cron`, not both"))
            }
            "every" => {
                periodic = true;
                options.schedule.push(format!("\"every_ms\":{}", duration_ms(value)?));
            }
            "cron" => {
                periodic = true;
                options.schedule.push(format!("\"cron\":{}", json_string(&string_lit(value)?)));
            }
            "runs" => options.schedule.push(format!("\"runs\":{}", int_lit(value)?)),
            "rate" => options.rate = Some(rate_lit(value)?),
            "burst" => options.burst = Some(bounded_int(value, "burst")?),
            "max_running" => options.max_running = Some(bounded_int(value, "max_running")?),
            "until" | "args" | "timezone" => {
                options.schedule.push(format!("{}:{}", json_string(&key), json_string(&string_lit(value)?)))
            }
            _ => {
                return Err(syn::Error::new(
                    pair.path.span(),
                    "unknown task option; use name, priority, timeout, retries, retry_delay, every, cron, runs, until, args, timezone, rate, burst or max_running",
                ))
            }
        }
    }
    if options.burst.is_some() && options.rate.is_none() {
        return Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "`burst` needs a `rate` (for example rate = \"20/s\")",
        ));
    }
    if !periodic && !options.schedule.is_empty() {
        return Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "runs, until, args and timezone need `every` or `cron`",
        ));
    }
    Ok(options)
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn string_lit(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(s) => Ok(s.value()),
            _ => Err(syn::Error::new(expr.span(), "expected a string literal")),
        },
        _ => Err(syn::Error::new(expr.span(), "expected a string literal")),
    }
}

fn int_lit(expr: &Expr) -> syn::Result<u64> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Int(i) => i.base10_parse(),
            _ => Err(syn::Error::new(expr.span(), "expected an integer")),
        },
        _ => Err(syn::Error::new(expr.span(), "expected an integer")),
    }
}

/// The fastest rate a task may declare, in runs per second (the host's bound).
const MAX_PER_SECOND: f64 = 1_000_000.0;
/// The largest burst or `max_running` a task may declare (the host's bound).
const MAX_COUNT: u64 = 1_000_000;

/// `"20/s"`, `"600/m"`, `"5/h"` as runs per second, within the host's range
/// (one an hour to a million a second).
fn rate_lit(expr: &Expr) -> syn::Result<f64> {
    let text = string_lit(expr)?;
    let bad = || {
        syn::Error::new(
            expr.span(),
            format!("rate \"{text}\" is not N/s, N/m or N/h with N a positive number (for example \"20/s\", \"600/m\", \"5/h\")"),
        )
    };
    let (number, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let number: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if !number.is_finite() || number <= 0.0 {
        return Err(bad());
    }
    let per_second = number / seconds;
    if !(1.0 / 3600.0..=MAX_PER_SECOND).contains(&per_second) {
        return Err(syn::Error::new(expr.span(), "a rate is between one run an hour (\"1/h\") and a million a second"));
    }
    Ok(per_second)
}

/// An integer option from 1 to [`MAX_COUNT`].
fn bounded_int(expr: &Expr, what: &str) -> syn::Result<u64> {
    let value = int_lit(expr)?;
    if value == 0 || value > MAX_COUNT {
        return Err(syn::Error::new(expr.span(), format!("{what} is from 1 to {MAX_COUNT}")));
    }
    Ok(value)
}

/// The task's further options as the JSON object `task_meta` carries
/// (empty when it declares none).
fn meta_json(options: &Options) -> String {
    let mut members = Vec::new();
    if let Some(per_second) = options.rate {
        let burst = options.burst.unwrap_or_else(|| (per_second.ceil() as u64).clamp(1, MAX_COUNT));
        members.push(format!("\"rate\":{{\"per_second\":{per_second:?},\"burst\":{burst}}}"));
    }
    if let Some(max_running) = options.max_running {
        members.push(format!("\"max_running\":{max_running}"));
    }
    if members.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", members.join(","))
    }
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`, or a bare integer of seconds.
fn duration_ms(expr: &Expr) -> syn::Result<u64> {
    if let Ok(seconds) = int_lit(expr) {
        return Ok(seconds * 1000);
    }
    let text = string_lit(expr)?;
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        syn::Error::new(expr.span(), "expected a duration such as \"250ms\", \"30s\", \"5m\" or \"1h\"")
    })?;
    let factor = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(syn::Error::new(expr.span(), "duration units are ms, s, m and h")),
    };
    Ok(number * factor)
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) => path.path.segments.last().is_some_and(|s| s.ident == name),
        Type::Reference(reference) => last_segment_is(&reference.elem, name),
        _ => false,
    }
}

fn tidy(tokens: impl ToTokens) -> String {
    let text = tokens.to_token_stream().to_string();
    text.replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace(" :: ", "::")
        .replace("& ", "&")
}

fn expand_task(attr: TokenStream2, function: &ItemFn) -> syn::Result<TokenStream2> {
    let options = parse_options(attr)?;
    let ident = &function.sig.ident;
    let vis = &function.vis;
    let task_name = options.name.clone().unwrap_or_else(|| ident.to_string());
    if function.sig.asyncness.is_some() {
        return Err(syn::Error::new(function.sig.span(), "tasks are plain functions; async fn is not supported"));
    }
    if !function.sig.generics.params.is_empty() {
        return Err(syn::Error::new(function.sig.generics.span(), "tasks cannot be generic"));
    }

    let mut takes_context = false;
    let mut params = Vec::new();
    let mut shown = Vec::new();
    for (position, input) in function.sig.inputs.iter().enumerate() {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new(input.span(), "tasks are free functions, not methods"));
        };
        if position == 0 && matches!(&*typed.ty, Type::Reference(_)) && last_segment_is(&typed.ty, "TaskContext") {
            takes_context = true;
            continue;
        }
        let name = match &*typed.pat {
            Pat::Ident(pat) => pat.ident.to_string(),
            _ => format!("arg{position}"),
        };
        shown.push(format!("{name}: {}", tidy(&typed.ty)));
        params.push((name, (*typed.ty).clone()));
    }

    let param_names: Vec<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
    let locals: Vec<syn::Ident> = (0..params.len()).map(|i| format_ident!("__arg{}", i)).collect();
    let takes = params.iter().enumerate().map(|(index, (_, ty))| {
        let local = &locals[index];
        quote! {
            let #local: #ty = args.take(#index).map_err(::fastworker_plugin_sdk::__private::bad_arguments)?;
        }
    });
    let context_arg = takes_context.then(|| quote!(ctx,));
    // Positional arguments decode in one pass; anything else (named
    // arguments, an error to report) goes through `Args::parse`.
    let split = quote! {
        let args = ::fastworker_plugin_sdk::__private::Args::parse(
            raw.as_slice(),
            #task_name,
            &[#(#param_names),*],
        )
        .map_err(::fastworker_plugin_sdk::__private::bad_arguments)?;
        let _ = &args;
        #(#takes)*
    };
    let decode = if params.is_empty() {
        split
    } else {
        let types = params.iter().map(|(_, ty)| ty);
        quote! {
            let (#(#locals,)*) = match ::fastworker_plugin_sdk::__private::Args::positional::<(#(#types,)*)>(raw.as_slice()) {
                Some(values) => values,
                None => {
                    #split
                    (#(#locals,)*)
                }
            };
        }
    };

    let result_type: Type = match &function.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => ok_type(ty).ok_or_else(|| {
            syn::Error::new(ty.span(), "a task returning Result names its success type: Result<T, E>")
        })?,
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let (returns, encode) = match &function.sig.output {
        ReturnType::Default => (String::new(), quote!(::fastworker_plugin_sdk::__private::encode(&()))),
        ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => (
            format!(" -> {}", tidy(ty)),
            quote! {
                match output {
                    Ok(value) => ::fastworker_plugin_sdk::__private::encode(&value),
                    Err(error) => Err(::fastworker_plugin_sdk::__private::task_error(error)),
                }
            },
        ),
        ReturnType::Type(_, ty) => {
            (format!(" -> {}", tidy(ty)), quote!(::fastworker_plugin_sdk::__private::encode(&output)))
        }
    };
    let signature = format!("{task_name}({}){returns}", shown.join(", "));
    let doc = function
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .find_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => string_lit(&nv.value).ok().map(|s| s.trim().to_string()),
            _ => None,
        })
        .unwrap_or_default();

    let decl = decl_ident(ident);
    let schema = schema_ident(ident);
    let schema_params = params.iter().map(|(name, ty)| {
        quote!((#name, ::fastworker_plugin_sdk::__private::schema_of::<#ty> as ::fastworker_plugin_sdk::__private::SchemaFn))
    });
    let priority = &options.priority;
    let schedule =
        if options.schedule.is_empty() { String::new() } else { format!("{{{}}}", options.schedule.join(",")) };
    let (timeout_ms, retries, retry_delay_ms) = (options.timeout_ms, options.retries, options.retry_delay_ms);
    let meta = meta_ident(ident);
    let meta_text = meta_json(&options);

    Ok(quote! {
        #function

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #decl: ::fastworker_plugin_sdk::abi::TaskDecl = {
            extern "C" fn call<'a>(
                ctx: &'a ::fastworker_plugin_sdk::TaskContext<'a>,
                raw: ::fastworker_plugin_sdk::__private::RSlice<'a, u8>,
            ) -> ::fastworker_plugin_sdk::__private::RResult<
                ::fastworker_plugin_sdk::__private::RVec<u8>,
                ::fastworker_plugin_sdk::abi::TaskFailure,
            > {
                let _ = &ctx;
                ::fastworker_plugin_sdk::__private::run(move || {
                    #decode
                    #[allow(clippy::let_unit_value)]
                    let output = #ident(#context_arg #(#locals),*);
                    #encode
                })
            }
            ::fastworker_plugin_sdk::abi::TaskDecl {
                name: ::fastworker_plugin_sdk::__private::RStr::from_str(#task_name),
                signature: ::fastworker_plugin_sdk::__private::RStr::from_str(#signature),
                doc: ::fastworker_plugin_sdk::__private::RStr::from_str(#doc),
                options: ::fastworker_plugin_sdk::TaskOptions {
                    priority: #priority,
                    timeout_ms: #timeout_ms,
                    max_retries: #retries,
                    retry_delay_ms: #retry_delay_ms,
                    schedule: ::fastworker_plugin_sdk::__private::RStr::from_str(#schedule),
                },
                call,
            }
        };

        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        #vis const #meta: ::fastworker_plugin_sdk::__private::RStr<'static> =
            ::fastworker_plugin_sdk::__private::RStr::from_str(#meta_text);

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #schema: ::fastworker_plugin_sdk::__private::SchemaDecl = ::fastworker_plugin_sdk::__private::SchemaDecl {
            task: #task_name,
            doc: #doc,
            params: &[#(#schema_params),*],
            result: ::fastworker_plugin_sdk::__private::schema_of::<#result_type>,
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(attr: TokenStream2) -> String {
        match parse_options(attr) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn limits_become_the_task_meta_json() {
        let options = parse_options(quote!(rate = "20/s", max_running = 4)).unwrap();
        assert_eq!(meta_json(&options), r#"{"rate":{"per_second":20.0,"burst":20},"max_running":4}"#);
        let options = parse_options(quote!(rate = "600/m", burst = 5)).unwrap();
        assert_eq!(meta_json(&options), r#"{"rate":{"per_second":10.0,"burst":5}}"#);
        let options = parse_options(quote!(rate = "5/h")).unwrap();
        assert!(meta_json(&options).ends_with(r#""burst":1}}"#), "at least one: {}", meta_json(&options));
        assert_eq!(meta_json(&parse_options(quote!(priority = "high")).unwrap()), "");
    }

    #[test]
    fn bad_limits_are_compile_errors_that_say_what_to_write() {
        for bad in [quote!(rate = "fast"), quote!(rate = "20"), quote!(rate = "0/s"), quote!(rate = "20/d")] {
            assert!(refusal(bad).contains("is not N/s, N/m or N/h"));
        }
        assert!(refusal(quote!(rate = "2000000/s")).contains("one run an hour"));
        assert!(refusal(quote!(rate = 20)).contains("string literal"));
        assert!(refusal(quote!(burst = 5)).contains("`burst` needs a `rate`"));
        assert!(refusal(quote!(rate = "1/s", burst = 0)).contains("burst is from 1"));
        assert!(refusal(quote!(max_running = 0)).contains("max_running is from 1"));
        assert!(refusal(quote!(max_running = 2000000)).contains("max_running is from 1"));
    }
}
