//! hv-cloud's HTTP surface driven by raw requests against a real `hv-cloud serve`: discovery,
//! tokens, microversions, pagination, TLS, and hostile requests (bad JSON, wrong types, huge
//! bodies, another project's token, path traversal, a qcow2 with a backing file): each gets a
//! clear error in the service's shape, nothing is stored, and the server keeps serving.

mod cloud_support;

use std::process::{Command, Stdio};

use cloud_support::{call, http, tenant, token, Serve, ADMIN_PASSWORD};
use hv_test_support::require;
use serde_json::json;

#[test]
fn discovery_is_public_and_tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path(), None);
    let a = &s.addr;

    let v = http(a, "GET", "/identity", &[], b"");
    assert_eq!(v.status, 300);
    assert_eq!(
        v.json()["versions"]["values"][0]["links"][0]["href"],
        format!("{}/identity/v3/", s.url)
    );
    assert_eq!(http(a, "GET", "/identity/v3", &[], b"").json()["version"]["id"], "v3.14");
    let c = http(a, "GET", "/compute/v2.1", &[], b"").json();
    assert_eq!(
        (c["version"]["version"].as_str(), c["version"]["min_version"].as_str()),
        (Some("2.1"), Some("2.1"))
    );
    let i = http(a, "GET", "/image", &[], b"");
    assert_eq!(i.status, 300);
    assert_eq!(i.json()["versions"][0]["links"][0]["href"], format!("{}/image/v2/", s.url));
    assert_eq!(http(a, "GET", "/volume/v3/", &[], b"").json()["versions"][0]["version"], "3.0");

    // No token, a made-up token: 401 in each service's shape.
    let n = http(a, "GET", "/compute/v2.1/flavors", &[], b"");
    assert_eq!(n.status, 401);
    assert_eq!(n.json()["unauthorized"]["code"], 401);
    let n = call(a, "0123abcd", "GET", "/image/v2/images", None);
    assert_eq!(n.status, 401);
    assert_eq!(n.json()["code"], 401);
    let n = call(a, "0123abcd", "GET", "/network/v2.0/extensions", None);
    assert_eq!(n.json()["NeutronError"]["type"], "NotAuthorized");

    // A wrong password is 401 with Keystone's shape; a good one gives a token and a catalog.
    let bad = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "nope"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
    let r = http(a, "POST", "/identity/v3/auth/tokens", &[], bad.to_string().as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], 401);
    let t = token(a, "admin", ADMIN_PASSWORD, "admin");
    let v = http(
        a,
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &t), ("X-Subject-Token", &t)],
        b"",
    );
    assert_eq!(v.status, 200);
    let body = v.json();
    assert_eq!(body["token"]["user"]["name"], "admin");
    assert_eq!(body["token"]["roles"][0]["name"], "admin");
    let types: Vec<&str> = body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["identity", "compute", "image", "network", "block-storage", "volumev3"]);
    let pid = body["token"]["project"]["id"].as_str().unwrap();
    assert_eq!(
        body["token"]["catalog"][4]["endpoints"][0]["url"],
        format!("{}/volume/v3/{pid}", s.url)
    );

    // Revocation takes effect at once, everywhere.
    let t2 = token(a, "admin", ADMIN_PASSWORD, "admin");
    assert_eq!(call(a, &t2, "GET", "/compute/v2.1/flavors", None).status, 200);
    let d = http(
        a,
        "DELETE",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &t), ("X-Subject-Token", &t2)],
        b"",
    );
    assert_eq!(d.status, 204);
    assert_eq!(call(a, &t2, "GET", "/compute/v2.1/flavors", None).status, 401);
    assert_eq!(call(a, &t, "GET", "/compute/v2.1/flavors", None).status, 200);
}

#[test]
fn microversions_are_negotiated_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path(), None);
    let t = token(&s.addr, "admin", ADMIN_PASSWORD, "admin");
    let get = |h: &[(&str, &str)]| {
        let mut hs = vec![("X-Auth-Token", t.as_str())];
        hs.extend_from_slice(h);
        http(&s.addr, "GET", "/compute/v2.1/flavors", &hs, b"")
    };
    let r = get(&[("OpenStack-API-Version", "compute 2.1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("openstack-api-version"), Some("compute 2.1"));
    assert_eq!(r.header("x-openstack-nova-api-version"), Some("2.1"));
    assert_eq!(
        get(&[("OpenStack-API-Version", "compute latest")]).header("openstack-api-version"),
        Some("compute 2.1")
    );
    let r = get(&[("OpenStack-API-Version", "compute 2.96")]);
    assert_eq!(r.status, 406);
    assert!(r.json()["notAcceptable"]["message"].as_str().unwrap().contains("maximum is 2.1"));
    assert_eq!(get(&[("X-OpenStack-Nova-API-Version", "2.60")]).status, 406);
    assert_eq!(get(&[("OpenStack-API-Version", "compute 2.x")]).status, 400);
}

#[test]
fn lists_page_with_limit_and_marker_and_filter_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path(), None);
    let (a, t) = (&s.addr, token(&s.addr, "admin", ADMIN_PASSWORD, "admin"));
    for (i, n) in ["f1", "f2", "f3"].iter().enumerate() {
        let f = json!({"flavor": {"name": n, "vcpus": 1, "ram": 64 * (i + 1), "disk": 0, "id": format!("id-{n}")}});
        assert_eq!(call(a, &t, "POST", "/compute/v2.1/flavors", Some(&f)).status, 200);
    }
    let p1 = call(a, &t, "GET", "/compute/v2.1/flavors/detail?limit=2", None).json();
    let ids: Vec<&str> =
        p1["flavors"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["id-f1", "id-f2"]);
    assert!(p1["flavors_links"][0]["href"].as_str().unwrap().ends_with("marker=id-f2"));
    let p2 = call(a, &t, "GET", "/compute/v2.1/flavors/detail?limit=2&marker=id-f2", None).json();
    assert_eq!(p2["flavors"].as_array().unwrap().len(), 1);
    assert!(p2.get("flavors_links").is_none());
    assert_eq!(call(a, &t, "GET", "/compute/v2.1/flavors?marker=nope", None).status, 400);
    assert_eq!(call(a, &t, "GET", "/compute/v2.1/flavors?limit=-1", None).status, 400);
    // The client's name lookups: by id first (404 for a name), then the name filter.
    assert_eq!(call(a, &t, "GET", "/compute/v2.1/flavors/f2", None).status, 404);
    for n in ["a", "b", "a"] {
        let r = call(
            a,
            &t,
            "POST",
            "/image/v2/images",
            Some(&json!({"name": n, "disk_format": "raw"})),
        );
        assert_eq!(r.status, 201);
    }
    let imgs = call(a, &t, "GET", "/image/v2/images?name=a", None).json();
    assert_eq!(imgs["images"].as_array().unwrap().len(), 2);
    let page = call(a, &t, "GET", "/image/v2/images?limit=1", None).json();
    let next = page["next"].as_str().unwrap().to_string();
    let rest = call(a, &t, "GET", &format!("/image{next}"), None).json();
    assert_eq!(rest["images"].as_array().unwrap().len(), 1);
    assert_ne!(rest["images"][0]["id"], page["images"][0]["id"]);
    let id = page["images"][0]["id"].as_str().unwrap();
    let by_in = call(a, &t, "GET", &format!("/image/v2/images?id=in:{id},x"), None).json();
    assert_eq!(by_in["images"].as_array().unwrap().len(), 1);
}

#[test]
fn hostile_requests_get_clear_errors_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path(), None);
    let (a, admin) = (&s.addr, token(&s.addr, "admin", ADMIN_PASSWORD, "admin"));
    let pa = tenant(a, &admin, "ta");
    tenant(a, &admin, "tb");
    let ta = token(a, "ta-user", "pw-ta", "ta");
    let tb = token(a, "tb-user", "pw-tb", "tb");
    let flavors = || {
        call(a, &admin, "GET", "/compute/v2.1/flavors", None).json()["flavors"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = flavors();

    // Bad JSON, wrong types, unknown fields, huge bodies.
    let h = [("X-Auth-Token", admin.as_str()), ("Content-Type", "application/json")];
    let r = http(a, "POST", "/compute/v2.1/flavors", &h, b"{\"flavor\": {");
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("malformed JSON"));
    let r = call(
        a,
        &admin,
        "POST",
        "/compute/v2.1/flavors",
        Some(&json!({"flavor": {"name": "x", "vcpus": "many", "ram": 1, "disk": 0}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("flavor.vcpus"));
    let r = call(
        a,
        &admin,
        "POST",
        "/compute/v2.1/flavors",
        Some(&json!({"flavor": {"name": "x", "vcpus": 1, "ram": 1, "disk": 0, "gpus": 4}})),
    );
    assert_eq!(r.status, 400);
    let r = call(
        a,
        &admin,
        "POST",
        "/compute/v2.1/flavors",
        Some(&json!({"flavor": {"name": "x", "vcpus": 0, "ram": 1, "disk": 0}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("vcpus"));
    let huge = format!("{{\"flavor\": {{\"name\": \"{}\"}}}}", "x".repeat(3 << 20));
    let r = http(a, "POST", "/compute/v2.1/flavors", &h, huge.as_bytes());
    assert_eq!(r.status, 413);
    let r = call(
        a,
        &admin,
        "POST",
        "/identity/v3/auth/tokens",
        Some(&json!({"auth": {"identity": 5}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("auth.identity"));
    let r = call(
        a,
        &admin,
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{pa}"),
        Some(&json!({"quota_set": {"key_pairs": 3}})),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["badRequest"]["message"].as_str().unwrap().contains("quota_set.key_pairs"));
    let r = call(a, &admin, "POST", "/image/v2/images", Some(&json!({"name": "bad\u{7}name"})));
    assert_eq!(r.status, 400);
    assert_eq!(flavors(), before);

    // Policy: a member cannot make flavors or set quotas (403); a tenant sees nothing of
    // another tenant (404, as for a missing id), also through Cinder's project in the URL.
    let r = call(
        a,
        &ta,
        "POST",
        "/compute/v2.1/flavors",
        Some(&json!({"flavor": {"name": "m", "vcpus": 1, "ram": 1, "disk": 0}})),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        call(
            a,
            &ta,
            "PUT",
            &format!("/compute/v2.1/os-quota-sets/{pa}"),
            Some(&json!({"quota_set": {"cores": 99}}))
        )
        .status,
        403
    );
    let img = call(
        a,
        &ta,
        "POST",
        "/image/v2/images",
        Some(&json!({"name": "../../etc/passwd", "disk_format": "raw", "visibility": "private"})),
    );
    assert_eq!(img.status, 201);
    let id = img.json()["id"].as_str().unwrap().to_string();
    for (m, p) in [
        ("GET", format!("/image/v2/images/{id}")),
        ("DELETE", format!("/image/v2/images/{id}")),
        ("GET", format!("/image/v2/images/{id}/file")),
        ("GET", format!("/compute/v2.1/os-quota-sets/{pa}")),
        ("GET", format!("/volume/v3/{pa}/os-quota-sets/{pa}")),
        ("GET", format!("/identity/v3/projects/{pa}")),
    ] {
        let r = call(a, &tb, m, &p, None);
        assert_eq!(r.status, 404, "{m} {p}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = http(
        a,
        "PUT",
        &format!("/image/v2/images/{id}/file"),
        &[("X-Auth-Token", tb.as_str()), ("Content-Type", "application/octet-stream")],
        &[1u8; 4096],
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        call(a, &ta, "GET", &format!("/image/v2/images/{id}"), None).json()["status"],
        "queued"
    );

    // Path traversal in names and ids never reaches a host path: the data lands in the pool
    // under the image's id, and a traversal id is just an unknown id.
    let up = http(
        a,
        "PUT",
        &format!("/image/v2/images/{id}/file"),
        &[("X-Auth-Token", ta.as_str()), ("Content-Type", "application/octet-stream")],
        &[7u8; 8192],
    );
    assert_eq!(up.status, 204, "{}", String::from_utf8_lossy(&up.body));
    assert_eq!(std::fs::read(dir.path().join("images").join(&id)).unwrap(), vec![7u8; 8192]);
    assert_eq!(
        call(a, &ta, "GET", "/image/v2/images/..%2F..%2Fetc%2Fpasswd/file", None).status,
        404
    );
    assert_eq!(call(a, &ta, "GET", "/image/v2/images/../../../etc/passwd", None).status, 404);
    let dl = call(a, &ta, "GET", &format!("/image/v2/images/{id}/file"), None);
    assert_eq!((dl.status, dl.body.len()), (200, 8192));
    // A second upload to an active image is a state conflict.
    let again = http(
        a,
        "PUT",
        &format!("/image/v2/images/{id}/file"),
        &[("X-Auth-Token", ta.as_str())],
        &[1u8; 16],
    );
    assert_eq!(again.status, 409);

    // A qcow2 whose header names a backing file is refused and killed; no data is kept.
    let q = dir.path().join("evil.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow"])
        .arg(&q)
        .arg("1M")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require!(made, "qemu-img (to write a qcow2 with a backing file)");
    let evil = call(
        a,
        &ta,
        "POST",
        "/image/v2/images",
        Some(&json!({"name": "evil", "disk_format": "qcow2"})),
    );
    let eid = evil.json()["id"].as_str().unwrap().to_string();
    let r = http(
        a,
        "PUT",
        &format!("/image/v2/images/{eid}/file"),
        &[("X-Auth-Token", ta.as_str()), ("Content-Type", "application/octet-stream")],
        &std::fs::read(&q).unwrap(),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("backing file"));
    assert_eq!(
        call(a, &ta, "GET", &format!("/image/v2/images/{eid}"), None).json()["status"],
        "killed"
    );
    assert!(!dir.path().join("images").join(&eid).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".part."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Still serving.
    assert_eq!(call(a, &admin, "GET", "/identity/v3/projects", None).status, 200);
}

#[test]
fn serve_refuses_to_start_without_an_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_hv-cloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path())
        .env_remove("HV_ADMIN_PASSWORD")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("HV_ADMIN_PASSWORD"));
    assert!(!dir.path().join("cloud.db").exists());
}

#[test]
fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require!(made, "openssl (to make a test certificate)");
    require!(Command::new("curl").arg("--version").output().is_ok(), "curl");
    let state = dir.path().join("state");
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let s = Serve::start_with(
        &state,
        None,
        &["--control-plane-only", "--tls-cert", c, "--tls-key", k],
        "127.0.0.1:0",
    );
    assert!(s.url.starts_with("https://"));
    let o = Command::new("curl")
        .args(["-sS", "--cacert", c, &format!("{}/identity/v3", s.url)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"]["links"][0]["href"], format!("{}/identity/v3/", s.url));
    // Plain HTTP on the TLS port gets no answer, and the server carries on.
    let _ = std::net::TcpStream::connect(&s.addr).map(|mut t| {
        use std::io::Write;
        let _ = t.write_all(b"GET /identity HTTP/1.1\r\n\r\n");
    });
    let o = Command::new("curl")
        .args(["-sS", "--cacert", c, &format!("{}/compute/v2.1", s.url)])
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn servers_on_a_control_plane_only_cloud_end_in_error_and_answer_in_novas_shape() {
    require!(hv_test_support::mini_kernel().is_some(), hv_test_support::KIT_MISSING);
    let kernel = std::fs::read(hv_test_support::mini_kernel().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(dir.path(), None);
    let a = &s.addr;
    let admin = token(a, "admin", ADMIN_PASSWORD, "admin");
    let pa = tenant(a, &admin, "pa");
    tenant(a, &admin, "pb");
    let (ta, tb) = (token(a, "pa-user", "pw-pa", "pa"), token(a, "pb-user", "pw-pb", "pb"));
    let f = call(
        a,
        &admin,
        "POST",
        "/compute/v2.1/flavors",
        Some(&json!({"flavor": {"name": "t", "ram": 64, "vcpus": 1, "disk": 1}})),
    );
    assert_eq!(f.status, 200);
    let fid = f.json()["flavor"]["id"].as_str().unwrap().to_string();
    let img = call(
        a,
        &ta,
        "POST",
        "/image/v2/images",
        Some(&json!({"name": "k", "disk_format": "aki", "container_format": "aki"})),
    );
    let iid = img.json()["id"].as_str().unwrap().to_string();
    let up = http(
        a,
        "PUT",
        &format!("/image/v2/images/{iid}/file"),
        &[("X-Auth-Token", ta.as_str()), ("Content-Type", "application/octet-stream")],
        &kernel,
    );
    assert_eq!(up.status, 204);

    // Hostile or unsupported bodies: 400 naming what is wrong, nothing made.
    for body in [
        json!({"server": {"name": "x", "flavorRef": fid}}),
        json!({"server": {"name": "x", "imageRef": iid, "flavorRef": fid, "max_count": 2}}),
        json!({"server": {"name": "x", "imageRef": iid, "flavorRef": fid, "networks": "some"}}),
        // 2.37's words, refused at 2.1 as Nova refuses them.
        json!({"server": {"name": "x", "imageRef": iid, "flavorRef": fid, "networks": "auto"}}),
        json!({"server": {"name": "x", "imageRef": iid, "flavorRef": fid,
                          "networks": [{"fixed_ip": "10.0.0.1"}]}}),
    ] {
        let r = call(a, &ta, "POST", "/compute/v2.1/servers", Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["badRequest"]["code"], 400);
    }
    let list = call(a, &ta, "GET", "/compute/v2.1/servers/detail?deleted=False", None);
    assert_eq!(list.json()["servers"], json!([]));

    // No compute host: the build ends in ERROR with a fault, never stays in BUILD.
    let body = json!({"server": {"name": "vm1", "imageRef": iid, "flavorRef": fid,
        "block_device_mapping_v2": [{"uuid": iid, "boot_index": 0, "source_type": "image",
            "destination_type": "local", "delete_on_termination": true}],
        "min_count": 1, "max_count": 1}});
    let r = call(a, &ta, "POST", "/compute/v2.1/servers", Some(&body));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let show = call(a, &ta, "GET", &format!("/compute/v2.1/servers/{id}"), None).json();
    let srv = &show["server"];
    assert_eq!((srv["status"].as_str(), srv["tenant_id"].as_str()), (Some("ERROR"), Some(&*pa)));
    assert_eq!(srv["OS-EXT-STS:vm_state"], "error");
    assert_eq!(
        (srv["image"]["id"].as_str(), srv["flavor"]["id"].as_str()),
        (Some(&*iid), Some(&*fid))
    );
    assert!(srv["fault"]["message"].as_str().unwrap().to_lowercase().contains("host"), "{srv}");
    let byname = call(a, &ta, "GET", "/compute/v2.1/servers?name=vm&status=error", None).json();
    assert_eq!(byname["servers"][0]["id"], id.as_str());
    let none = call(a, &ta, "GET", "/compute/v2.1/servers/detail?status=ACTIVE", None).json();
    assert_eq!(none["servers"], json!([]));

    // State conflicts are 409; unknown actions 400; the other tenant gets 404 for everything.
    let act = |t: &str, body: serde_json::Value| {
        call(a, t, "POST", &format!("/compute/v2.1/servers/{id}/action"), Some(&body))
    };
    let r = act(&ta, json!({"os-start": null}));
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["conflictingRequest"]["code"], 409);
    assert_eq!(act(&ta, json!({"reboot": {"type": "SOFT"}})).status, 409);
    assert_eq!(act(&ta, json!({"reboot": {"type": "WARM"}})).status, 400);
    assert_eq!(act(&ta, json!({"evacuate": {}})).status, 400);
    assert_eq!(act(&tb, json!({"os-start": null})).status, 404);
    assert_eq!(call(a, &tb, "GET", &format!("/compute/v2.1/servers/{id}"), None).status, 404);
    assert_eq!(call(a, &tb, "DELETE", &format!("/compute/v2.1/servers/{id}"), None).status, 404);
    assert_eq!(call(a, &tb, "GET", "/compute/v2.1/servers", None).json()["servers"], json!([]));

    // No block storage without a compute host.
    let v = call(
        a,
        &ta,
        "POST",
        &format!("/volume/v3/{pa}/volumes"),
        Some(&json!({"volume": {"size": 1}})),
    );
    assert_eq!(v.status, 501, "{}", String::from_utf8_lossy(&v.body));

    // Without `networks`, two networks of the project are ambiguous: Nova's 409, nothing made.
    for n in ["n1", "n2"] {
        let r =
            call(a, &ta, "POST", "/network/v2.0/networks", Some(&json!({"network": {"name": n}})));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let body = json!({"server": {"name": "vm2", "imageRef": iid, "flavorRef": fid}});
    let r = call(a, &ta, "POST", "/compute/v2.1/servers", Some(&body));
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["conflictingRequest"]["message"],
        "Multiple possible networks found, use a Network ID to be more specific."
    );
    let byname = call(a, &ta, "GET", "/compute/v2.1/servers?name=vm2", None).json();
    assert_eq!(byname["servers"], json!([]));

    // Delete: 204, then 404.
    assert_eq!(call(a, &ta, "DELETE", &format!("/compute/v2.1/servers/{id}"), None).status, 204);
    assert_eq!(call(a, &ta, "GET", &format!("/compute/v2.1/servers/{id}"), None).status, 404);
}
