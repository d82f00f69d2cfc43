use clap::Parser;

use super::*;

/// Parses `up`-style pref flags the way the real command line does.
#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    prefs: PrefFlags,
    #[arg(long)]
    reset: bool,
}

fn flags(args: &[&str]) -> (PrefFlags, bool) {
    let f = Flags::try_parse_from(std::iter::once("up").chain(args.iter().copied())).unwrap();
    (f.prefs, f.reset)
}

/// The context of a registered node with `current` prefs and no
/// system-wide default server.
fn reg(current: &Prefs) -> Context<'_> {
    Context {
        current,
        registered: true,
        default_server: None,
        applied_tags: None,
    }
}

fn prefs_with(edit: impl FnOnce(&mut Prefs)) -> Prefs {
    let mut p = Prefs::default();
    edit(&mut p);
    p
}

#[test]
fn unmentioned_non_default_prefs_are_refused_with_the_flags_that_keep_them() {
    // (current prefs, flags, the missing flags the error must list)
    let cases: Vec<(Prefs, Vec<&str>, Vec<&str>)> = vec![
        (
            prefs_with(|p| p.run_ssh = true),
            vec!["--shields-up"],
            vec!["--ssh"],
        ),
        (
            prefs_with(|p| p.accept_dns = false),
            vec!["--ssh"],
            vec!["--accept-dns=false"],
        ),
        (
            prefs_with(|p| {
                p.hostname = Some("foo".into());
                p.run_ssh = true;
                p.advertise_tags = vec!["tag:web".into(), "tag:db".into()];
            }),
            vec!["--shields-up=false"],
            vec!["--advertise-tags=tag:db,tag:web", "--hostname=foo", "--ssh"],
        ),
        (
            prefs_with(|p| {
                p.control_url = "https://ctl.example".into();
                p.run_ssh = true;
            }),
            vec!["--shields-up"],
            vec!["--ssh"],
        ),
    ];
    for (current, args, want) in cases {
        let (f, reset) = flags(&args);
        let got = plan(&f, reset, false, reg(&current));
        let want = want.into_iter().map(str::to_owned).collect();
        assert_eq!(
            got,
            Err(PlanError::Sticky { missing: want }),
            "flags {args:?}"
        );
    }
}

#[test]
fn mentioning_every_non_default_pref_passes_and_changes_only_what_was_asked() {
    let current = prefs_with(|p| {
        p.run_ssh = true;
        p.hostname = Some("foo".into());
        p.nickname = Some("work".into());
    });
    let (f, reset) = flags(&["--ssh", "--hostname=foo", "--shields-up"]);
    let got = plan(&f, reset, false, reg(&current)).unwrap().unwrap();
    let want = Prefs {
        shields_up: true,
        want_running: true,
        ..current
    };
    assert_eq!(got, want);
}

#[test]
fn flags_equal_to_the_default_do_not_need_to_be_mentioned() {
    // accept_dns=true and no hostname are defaults: nothing is missing.
    let current = prefs_with(|p| p.hostname = Some(String::new()));
    let (f, reset) = flags(&["--ssh"]);
    assert!(plan(&f, reset, false, reg(&current)).is_ok());
}

#[test]
fn reset_turns_unmentioned_prefs_back_to_defaults_but_keeps_the_nickname() {
    let current = prefs_with(|p| {
        p.run_ssh = true;
        p.shields_up = true;
        p.nickname = Some("home".into());
    });
    let (f, reset) = flags(&["--reset", "--hostname=box"]);
    let got = plan(&f, reset, false, reg(&current)).unwrap().unwrap();
    let want = prefs_with(|p| {
        p.hostname = Some("box".into());
        p.nickname = Some("home".into());
        p.want_running = true;
    });
    assert_eq!(got, want);
}

#[test]
fn a_bare_up_keeps_the_current_prefs() {
    let current = prefs_with(|p| p.run_ssh = true);
    let (f, reset) = flags(&[]);
    assert_eq!(plan(&f, reset, false, reg(&current)), Ok(None));
}

#[test]
fn changing_the_login_server_of_a_registered_node_needs_force_reauth_and_says_so() {
    let current = Prefs::default();
    let (f, reset) = flags(&["--login-server=http://other:8080/"]);
    let err = plan(&f, reset, false, reg(&current)).unwrap_err();
    assert_eq!(
        err,
        PlanError::IdentityChange {
            flag: "--login-server",
            from: "http://127.0.0.1:8080".into(),
            to: "http://other:8080".into()
        }
    );
    assert_eq!(
        err.identity_message("weft").unwrap(),
        "can't change --login-server from http://127.0.0.1:8080 to http://other:8080: \
         this profile is registered at http://127.0.0.1:8080; re-run with --force-reauth \
         to register this profile at http://other:8080 instead, or keep both with \
         'weft login --login-server=http://other:8080'"
    );
    assert!(plan(&f, reset, true, reg(&current)).is_ok());
}

#[test]
fn a_login_server_that_never_registered_the_node_is_replaced_freely() {
    // `up --login-server=typo` failed to connect: the profile holds the
    // typo but never registered, whatever the backend state says.
    let current = prefs_with(|p| {
        p.control_url = "http://typo:8080".into();
        p.want_running = true;
    });
    let (f, reset) = flags(&["--login-server=http://198.18.0.1:8080"]);
    let ctx = Context {
        registered: false,
        ..reg(&current)
    };
    let got = plan(&f, reset, false, ctx).unwrap().unwrap();
    assert_eq!(got.control_url, "http://198.18.0.1:8080");
}

#[test]
fn the_login_server_is_remembered_and_never_sticky() {
    // Joined with --login-server: `up --ssh` alone keeps the server.
    let current = prefs_with(|p| p.control_url = "http://198.18.0.1:8080".into());
    for args in [
        vec!["--ssh"],
        vec!["--shields-up"],
        vec!["--accept-dns=false"],
        vec!["--reset"],
    ] {
        let (f, reset) = flags(&args);
        let got = plan(&f, reset, false, reg(&current)).unwrap().unwrap();
        assert_eq!(got.control_url, "http://198.18.0.1:8080", "{args:?}");
    }
    let (f, reset) = flags(&["--ssh"]);
    let got = plan(&f, reset, false, reg(&current)).unwrap().unwrap();
    assert!(got.run_ssh && got.want_running);
}

#[test]
fn the_system_default_server_applies_only_to_a_profile_nobody_pointed_anywhere() {
    let fresh = Prefs::default();
    let ctx = |current| Context {
        current,
        registered: false,
        default_server: Some("https://ctl.example.net/"),
        applied_tags: None,
    };
    // A bare `up` on a fresh profile joins the default server.
    let (f, reset) = flags(&[]);
    let got = plan(&f, reset, false, ctx(&fresh)).unwrap().unwrap();
    assert_eq!(got.control_url, "https://ctl.example.net");
    // A flag wins over the default.
    let (f, reset) = flags(&["--login-server=http://198.18.0.1:8080"]);
    let got = plan(&f, reset, false, ctx(&fresh)).unwrap().unwrap();
    assert_eq!(got.control_url, "http://198.18.0.1:8080");
    // A profile already on another server keeps it.
    let elsewhere = prefs_with(|p| p.control_url = "http://198.18.0.1:8080".into());
    let (f, reset) = flags(&[]);
    assert_eq!(plan(&f, reset, false, ctx(&elsewhere)), Ok(None));
    // A registered profile on the built-in server is not moved.
    let registered = Context {
        registered: true,
        ..ctx(&fresh)
    };
    assert_eq!(plan(&f, reset, false, registered), Ok(None));
}

#[test]
fn the_default_server_comes_from_the_environment_then_the_defaults_file() {
    let file = "# weft defaults\nWEFT_LOGIN_SERVER=http://a:8080\nexport WEFT_LOGIN_SERVER=\"https://b.example\"\n";
    assert_eq!(
        default_login_server(None, Some(file)),
        Ok(Some("https://b.example".into())),
        "the last assignment wins"
    );
    assert_eq!(
        default_login_server(Some("http://env:8080/"), Some(file)),
        Ok(Some("http://env:8080".into()))
    );
    assert_eq!(default_login_server(Some(""), None), Ok(None));
    assert_eq!(default_login_server(None, Some("OTHER=1\n")), Ok(None));
    let err = default_login_server(None, Some("WEFT_LOGIN_SERVER=ctl:8080\n")).unwrap_err();
    assert!(
        err.starts_with("/etc/default/weft: WEFT_LOGIN_SERVER: "),
        "{err}"
    );
    let err = default_login_server(Some("ftp://x"), None).unwrap_err();
    assert!(err.starts_with("$WEFT_LOGIN_SERVER: "), "{err}");
}

#[test]
fn changing_tags_of_a_registered_node_needs_force_reauth_and_removing_them_is_refused() {
    let current = prefs_with(|p| p.advertise_tags = vec!["tag:web".into()]);
    let (f, reset) = flags(&["--advertise-tags=web,db"]);
    let err = plan(&f, reset, false, reg(&current)).unwrap_err();
    assert_eq!(
        err,
        PlanError::IdentityChange {
            flag: "--advertise-tags",
            from: "tag:web".into(),
            to: "tag:db,tag:web".into()
        }
    );
    let msg = err.identity_message("weft").unwrap();
    assert!(
        msg.starts_with("can't change --advertise-tags from tag:web to tag:db,tag:web")
            && msg.contains("--force-reauth")
            && !msg.contains('\n'),
        "{msg}"
    );
    let got = plan(&f, reset, true, reg(&current)).unwrap().unwrap();
    assert_eq!(got.advertise_tags, ["tag:db", "tag:web"]);
    // Dropping a tag: refused even with --force-reauth, and by --reset too.
    let (f, reset) = flags(&["--advertise-tags=db"]);
    for force in [false, true] {
        let err = plan(&f, reset, force, reg(&current)).unwrap_err();
        assert_eq!(
            err,
            PlanError::TagsRemoved {
                dropped: "tag:web".into()
            }
        );
        let msg = err.identity_message("weft").unwrap();
        assert!(
            msg.starts_with("can't remove tag:web from this node with 'weft up'")
                && msg.contains("weft-control nodes tags"),
            "{msg}"
        );
    }
    let (f, reset) = flags(&["--reset"]);
    assert!(matches!(
        plan(&f, reset, false, reg(&current)),
        Err(PlanError::TagsRemoved { .. })
    ));
    // Before registration, tags are only a wish: no refusal.
    let ctx = Context {
        registered: false,
        ..reg(&current)
    };
    assert!(plan(&f, reset, false, ctx).is_ok());
}

#[test]
fn the_tags_control_applied_count_rather_than_an_earlier_refused_wish() {
    // An earlier `--advertise-tags=tag:db --force-reauth` was refused by
    // control but left its wish in the prefs.
    let current = prefs_with(|p| p.advertise_tags = vec!["tag:db".into()]);
    let applied = vec!["tag:web".to_owned()];
    let ctx = Context {
        applied_tags: Some(&applied),
        ..reg(&current)
    };
    let (f, reset) = flags(&["--advertise-tags=tag:web"]);
    let got = plan(&f, reset, false, ctx).unwrap().unwrap();
    assert_eq!(got.advertise_tags, ["tag:web"]);
    let (f, reset) = flags(&["--advertise-tags="]);
    assert_eq!(
        plan(&f, reset, true, ctx),
        Err(PlanError::TagsRemoved {
            dropped: "tag:web".into()
        })
    );
}

#[test]
fn the_sticky_message_lists_your_flags_then_the_missing_ones() {
    let explicit = vec!["--shields-up".to_owned(), "--timeout=30s".to_owned()];
    let missing = vec!["--hostname=foo".to_owned(), "--ssh".to_owned()];
    let msg = sticky_message("weft --socket=/tmp/a.sock", &explicit, &missing);
    assert_eq!(
        msg,
        "'weft up' takes the complete settings, and leaving out --hostname=foo --ssh would \
         reset them to the default; to keep them run: weft --socket=/tmp/a.sock up --shields-up \
         --timeout=30s --hostname=foo --ssh (or add --reset to reset them, or use 'weft set')"
    );
}

#[test]
fn rendered_flags_are_canonical_and_sorted() {
    let (f, _) = flags(&[
        "--ssh=false",
        "--advertise-tags=b,tag:a",
        "--accept-dns",
        "--hostname=",
    ]);
    assert_eq!(
        f.rendered(),
        vec![
            "--accept-dns",
            "--advertise-tags=tag:a,tag:b",
            "--hostname=",
            "--ssh=false"
        ]
    );
}

#[test]
fn bad_flag_values_are_rejected_at_parse_time() {
    for bad in [
        vec!["--login-server=ftp://x"],
        vec!["--login-server=http://"],
        vec!["--advertise-tags=tag:9bad"],
        vec!["--advertise-tags=a b"],
        vec!["--hostname=has space"],
        vec!["--ssh", "yes"],
        vec!["--login-server-ca=/nonexistent-ca.pem"],
        vec!["--login-server-ca=/"],
    ] {
        let argv = std::iter::once("up").chain(bad.iter().copied());
        assert!(
            Flags::try_parse_from(argv).is_err(),
            "{bad:?} should be a usage error"
        );
    }
}

#[test]
fn boolean_flags_take_go_style_values() {
    let (f, _) = flags(&["--ssh=false", "--shields-up=1", "--accept-dns=no"]);
    assert_eq!(
        (f.ssh, f.shields_up, f.accept_dns),
        (Some(false), Some(true), Some(false))
    );
}

#[test]
fn an_empty_login_server_ca_forgets_the_profiles_ca_file() {
    let mut p = prefs_with(|p| p.control_ca_file = Some("/etc/weft/ca.pem".into()));
    let (f, _) = flags(&["--login-server-ca="]);
    f.apply_to(&mut p);
    assert_eq!(p.control_ca_file, None);
    let (f, _) = flags(&[]);
    let mut kept = prefs_with(|p| p.control_ca_file = Some("/etc/weft/ca.pem".into()));
    f.apply_to(&mut kept);
    assert_eq!(kept.control_ca_file.as_deref(), Some("/etc/weft/ca.pem"));
}

#[test]
fn ssh_x11_is_a_sticky_pref_that_up_sets_and_keeps() {
    // Turned on by `up --ssh --ssh-x11`.
    let current = prefs_with(|p| p.run_ssh = true);
    let (f, reset) = flags(&["--ssh", "--ssh-x11"]);
    let got = plan(&f, reset, false, reg(&current)).unwrap().unwrap();
    assert!(got.run_ssh && got.ssh_x11);

    // Leaving it out later would turn it off: refused, naming the flag that keeps it.
    let (f, reset) = flags(&["--ssh"]);
    assert_eq!(
        plan(&f, reset, false, reg(&got)),
        Err(PlanError::Sticky {
            missing: vec!["--ssh-x11".into()]
        })
    );
    let (f, reset) = flags(&["--ssh", "--ssh-x11=false"]);
    let off = plan(&f, reset, false, reg(&got)).unwrap().unwrap();
    assert!(off.run_ssh && !off.ssh_x11);
    assert_eq!(f.rendered(), vec!["--ssh", "--ssh-x11=false"]);
}
