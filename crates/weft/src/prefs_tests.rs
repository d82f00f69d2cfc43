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
            prefs_with(|p| p.control_url = "https://ctl.example".into()),
            vec!["--ssh"],
            vec!["--login-server=https://ctl.example"],
        ),
    ];
    for (current, args, want) in cases {
        let (f, reset) = flags(&args);
        let got = plan(&f, reset, false, true, &current);
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
    let got = plan(&f, reset, false, true, &current).unwrap().unwrap();
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
    assert!(plan(&f, reset, false, true, &current).is_ok());
}

#[test]
fn reset_turns_unmentioned_prefs_back_to_defaults_but_keeps_the_nickname() {
    let current = prefs_with(|p| {
        p.run_ssh = true;
        p.shields_up = true;
        p.nickname = Some("home".into());
    });
    let (f, reset) = flags(&["--reset", "--hostname=box"]);
    let got = plan(&f, reset, false, true, &current).unwrap().unwrap();
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
    assert_eq!(plan(&f, reset, false, true, &current), Ok(None));
}

#[test]
fn changing_the_login_server_of_a_logged_in_node_needs_force_reauth() {
    let current = Prefs::default();
    let (f, reset) = flags(&["--login-server=http://other:8080/"]);
    assert_eq!(
        plan(&f, reset, false, true, &current),
        Err(PlanError::LoginServerChange {
            from: "http://127.0.0.1:8080".into(),
            to: "http://other:8080".into()
        })
    );
    assert!(plan(&f, reset, true, true, &current).is_ok());
    assert!(
        plan(&f, reset, false, false, &current).is_ok(),
        "a logged-out node may move"
    );
}

#[test]
fn the_sticky_message_lists_your_flags_then_the_missing_ones() {
    let explicit = vec!["--shields-up".to_owned(), "--timeout=30s".to_owned()];
    let missing = vec!["--hostname=foo".to_owned(), "--ssh".to_owned()];
    let msg = sticky_message("weft --socket=/tmp/a.sock", &explicit, &missing);
    assert_eq!(
        msg,
        "changing settings via 'weft up' requires mentioning all\n\
         non-default flags. To proceed, either re-run your command with --reset or\n\
         use the command below to explicitly mention the current value of\n\
         all non-default settings:\n\
         \n\
         \tweft --socket=/tmp/a.sock up --shields-up --timeout=30s --hostname=foo --ssh"
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
