//! The application's router together with the templates of its routes. The observe layer
//! runs around the whole router rather than on every route (per route, axum boxes and clones
//! the layered service for each request), so it cannot read axum's `MatchedPath`: it finds a
//! request's template, the metrics' `route` label, in this table instead.

use axum::routing::MethodRouter;
use axum::Router;
use std::sync::Arc;

/// Routes being added: each `route` call adds to the router and to the templates at once, so
/// the two cannot disagree.
pub struct Routes<S> {
    router: Router<S>,
    templates: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            templates: Vec::new(),
        }
    }

    pub fn route(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router);
        self.templates.push(path.to_owned());
        self
    }

    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.templates.extend(other.templates);
        self
    }

    /// Changes the router (a layer over these routes, a fallback) without adding routes.
    pub fn map_router(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    pub fn into_parts(self) -> (Router<S>, Templates) {
        let mut table = matchit::Router::new();
        for path in self.templates {
            let label: Arc<str> = Arc::from(path.as_str());
            // The router accepted the same paths, so they insert here too.
            table
                .insert(path, label)
                .expect("a route template the router accepted");
        }
        (self.router, Templates(Arc::new(table)))
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// The route templates, looked up the way axum's router matches paths (both use `matchit`).
#[derive(Clone, Default)]
pub struct Templates(Arc<matchit::Router<Arc<str>>>);

impl Templates {
    /// The template of the route that answers `path`; `None` for the fallback.
    pub fn of(&self, path: &str) -> Option<Arc<str>> {
        self.0.at(path).ok().map(|m| m.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[test]
    fn templates_match_like_the_router() {
        let routes: Routes<()> = Routes::new()
            .route("/-/whoami", get(|| async {}))
            .route("/-/user/{id}", get(|| async {}))
            .merge(Routes::new().route("/-/web/{*rest}", get(|| async {})));
        let (_, templates) = routes.into_parts();
        let of = |p: &str| templates.of(p).map(|t| t.to_string());
        assert_eq!(of("/-/whoami").as_deref(), Some("/-/whoami"));
        assert_eq!(
            of("/-/user/org.couchdb.user:alice").as_deref(),
            Some("/-/user/{id}")
        );
        assert_eq!(of("/-/web/a/b").as_deref(), Some("/-/web/{*rest}"));
        assert_eq!(of("/-/whoami/"), None);
        assert_eq!(of("/lodash"), None);
    }
}
