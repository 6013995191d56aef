//! Claiming names: host mode, and invalid names refused with a reason.

mod support;

use http::HeaderValue;
use ptth::UpgradeRequest;
use support::*;

#[tokio::test]
async fn host_mode_claim_then_host_routed_request() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let port = relay.addr.port();
        let host = format!("hosted.localhost:{port}");
        // Upgrade request to `/` with the name in Host.
        let mut req = UpgradeRequest::new(HeaderValue::from_str(&host).unwrap());
        req.target = "/".to_string();
        let conn = connect_one(relay.addr, &req, echo_handler("h"))
            .await
            .unwrap();
        relay.handle.wait_idle("hosted", 1).await;
        assert_eq!(connections(&relay.handle, "hosted"), 1);
        let (s, _, body) = get(relay.addr, "/some/path?q=1", Some(&host)).await;
        assert_eq!(s, 200, "{body}");
        // Host mode: the path is unchanged and no prefix is set.
        assert!(body.starts_with("h /some/path?q=1 prefix= "), "{body}");
        conn.abort();
    })
    .await
}

#[tokio::test]
async fn invalid_names_on_claim_are_400_with_a_reason() {
    deadline(async {
        let relay = start_relay(anonymous()).await;
        let long = "a".repeat(64);
        for (name, reason) in [
            ("UpperCase", "only a-z, 0-9 and - are allowed"),
            (long.as_str(), "longer than 63 characters"),
            ("under_score", "only a-z, 0-9 and - are allowed"),
        ] {
            let req = claim_request(relay.addr, name, None);
            let err = connect_one(relay.addr, &req, echo_handler("x"))
                .await
                .unwrap_err();
            let refusal = err.refusal().expect("a refusal, not a transport error");
            assert_eq!(refusal.status, 400, "{name}");
            let body = String::from_utf8_lossy(&refusal.body);
            assert!(body.contains(reason), "{name}: {body}");
        }
        // In host mode too.
        let mut req = UpgradeRequest::new(HeaderValue::from_static("Bad_Name.localhost"));
        req.target = "/".to_string();
        let err = connect_one(relay.addr, &req, echo_handler("x"))
            .await
            .unwrap_err();
        assert_eq!(err.refusal().unwrap().status, 400);
        assert!(relay.handle.stats().is_empty());
        assert_eq!(relay.handle.agents(), 0);
    })
    .await
}
