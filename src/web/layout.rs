//! The page frame, its small stylesheet and script (inline, allowed by their hashes in the
//! Content-Security-Policy), and the security headers every page carries.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#5b6475;--line:#d8dde6;--bg:#f6f7f9;--accent:#1f5fbf;--danger:#b42318;--ok:#067647}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff}
header .bar{max-width:64rem;margin:0 auto;padding:.6rem 1rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}
header a:hover,header a:focus{text-decoration:underline}
header .brand{font-weight:700;margin-right:auto}
header .who{color:#c5cbd6}
header form{margin:0}
header button{background:none;border:1px solid #8c95a6;color:#fff;padding:.2rem .7rem}
main{max-width:64rem;margin:1.5rem auto;padding:0 1rem}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1.2rem 1.4rem;margin-bottom:1.2rem}
.narrow{max-width:28rem;margin-left:auto;margin-right:auto}
h1{font-size:1.5rem;margin:0 0 1rem}
.head{display:flex;justify-content:space-between;align-items:center;gap:1rem;flex-wrap:wrap}
.head h1{margin:0}
h2{font-size:1.15rem;margin:1.2rem 0 .6rem}
label{display:block;font-weight:600;margin:.8rem 0 .25rem}
.hint{font-weight:400;color:var(--muted);font-size:.9rem}
input[type=text],input[type=password],input[type=email],input[type=number],select,textarea{width:100%;padding:.45rem .55rem;border:1px solid #aab2c0;border-radius:6px;font:inherit;background:#fff}
input:focus,select:focus,textarea:focus,button:focus,a:focus{outline:3px solid #9cc2ff;outline-offset:1px}
.check{display:flex;gap:.5rem;align-items:center;font-weight:400}
.check input{width:auto}
fieldset{border:1px solid var(--line);border-radius:8px;margin:1rem 0;padding:.4rem 1rem 1rem}
legend{font-weight:700;padding:0 .3rem}
.row{display:flex;gap:1rem;flex-wrap:wrap}.row>div{flex:1 1 12rem}
button,.button{display:inline-block;padding:.5rem 1rem;border-radius:6px;border:1px solid var(--accent);background:var(--accent);color:#fff;font:inherit;font-weight:600;cursor:pointer;text-decoration:none}
button.secondary,.button.secondary{background:#fff;color:var(--accent)}
button.danger,.button.danger{background:var(--danger);border-color:var(--danger)}
.actions{display:flex;gap:.7rem;margin-top:1.2rem;flex-wrap:wrap;align-items:center}
table{width:100%;border-collapse:collapse;font-size:.92rem}
th,td{text-align:left;padding:.5rem .4rem;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.badge{display:inline-block;padding:0 .45rem;border-radius:999px;background:#e8eef9;color:#1f4b99;font-size:.8rem;font-weight:600;white-space:nowrap}
.badge.session{background:#eef0f3;color:#3b4352}.badge.read-only{background:#e7f6ec;color:var(--ok)}
.badge.automation{background:#fff4e0;color:#93370d}.badge.granular{background:#f3ecfb;color:#6b2fb3}
.error{border-left:4px solid var(--danger);background:#fef3f2;padding:.6rem .9rem;margin:0 0 1rem}
.notice{border-left:4px solid var(--ok);background:#ecfdf3;padding:.6rem .9rem;margin:0 0 1rem}
.warn{border-left:4px solid #dc6803;background:#fffaeb;padding:.6rem .9rem;margin:0 0 1rem}
.secret{display:flex;gap:.5rem}.secret input{flex:1;font-family:ui-monospace,Menlo,Consolas,monospace}
.qr{width:220px;height:220px;border:1px solid var(--line);padding:6px;background:#fff}
.qr svg{width:100%;height:100%}
textarea.mono{font-size:.85rem;resize:vertical}
.muted{color:var(--muted)}
"#;

/// Copies the value of the element named by a button's `data-copy` to the clipboard.
const SCRIPT: &str = r#"
document.querySelectorAll('button[data-copy]').forEach(function(b){
  b.addEventListener('click',function(){
    var f=document.getElementById(b.getAttribute('data-copy'));
    var done=function(){b.textContent='Copied';};
    if(navigator.clipboard){navigator.clipboard.writeText(f.value).then(done,function(){f.select();document.execCommand('copy');done();});}
    else{f.select();document.execCommand('copy');done();}
  });
});
"#;

fn sha256_b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// No source but this page's own stylesheet and script (by hash); no framing, no plugins,
/// forms post only to this site.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        sha256_b64(CSS),
        sha256_b64(SCRIPT)
    );
    HeaderValue::from_str(&policy).expect("CSP is a valid header value")
});

/// The headers of every page: a strict CSP, no framing, no sniffing, no caching, no referrer
/// (the npm login link carries a secret in its query).
pub async fn page_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Who is signed in, for the navigation bar.
pub struct Nav<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
}

/// A whole page.
pub fn page(title: &str, nav: Option<Nav<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tokengate" }
                // No request for /favicon.ico (a registry path).
                link rel="icon" href="data:,";
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    nav.bar aria-label="Main" {
                        a.brand href="/-/web/tokens" { "tokengate" }
                        @if let Some(nav) = &nav {
                            a href="/-/web/tokens" { "Access Tokens" }
                            a href="/-/web/tfa" { "Two-factor authentication" }
                            a href="/-/web/password" { "Password" }
                            span.who { "Signed in as " strong { (nav.user) } }
                            form method="post" action="/-/web/logout" {
                                input type="hidden" name="csrf" value=(nav.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// A page as a response.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// An error banner, when there is an error.
pub fn error_box(error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_allows_exactly_the_inline_style_and_script() {
        let csp = CSP.to_str().unwrap();
        assert!(
            csp.contains(&format!("'sha256-{}'", sha256_b64(CSS))),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("'sha256-{}'", sha256_b64(SCRIPT))),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let page = page("t", None, html! { p { "<b>" } }).into_string();
        // The hashes cover the element contents exactly as served.
        assert!(page.contains(&format!("<style>{CSS}</style>")));
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains("&lt;b&gt;"), "text is escaped");
    }
}
