//! Property: saving a random tree and restoring it reproduces it exactly, in every link mode
//! that keeps attributes (copy, auto).

mod common;

use common::*;
use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, Clone)]
enum Node {
    File { content: Vec<u8>, mode: u32 },
    Dir(Vec<(String, Node)>),
    Symlink(String),
}

fn name() -> impl Strategy<Value = String> {
    // Include spaces, dots, unicode and shell-hostile characters; never `.`/`..` or `/`.
    "[a-zA-Z0-9 _.é€-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            prop_oneof![Just(0o644u32), Just(0o755), Just(0o600), Just(0o444)]
        )
            .prop_map(|(content, mode)| Node::File { content, mode }),
        "[a-z./]{1,20}".prop_map(Node::Symlink),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::btree_map(name(), inner, 0..6).prop_map(|m| Node::Dir(m.into_iter().collect()))
    })
}

fn write(p: &Path, n: &Node, seq: &mut i64) {
    match n {
        Node::File { content, mode } => {
            fs::write(p, content).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(*mode)).unwrap();
        }
        Node::Symlink(t) => std::os::unix::fs::symlink(t, p).unwrap(),
        Node::Dir(children) => {
            fs::create_dir(p).unwrap();
            for (name, c) in children {
                write(&p.join(name), c, seq);
            }
        }
    }
    *seq += 1;
    set_mtime(p, 1_500_000_000 + *seq * 7, (*seq as u32 * 7919) % 1_000_000_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn save_then_restore_reproduces_random_trees(children in proptest::collection::btree_map(name(), node(), 0..8)) {
        let d = tempfile::tempdir().unwrap();
        let (src, store) = (d.path().join("src"), d.path().join("store"));
        let mut seq = 0;
        write(&src, &Node::Dir(children.into_iter().collect()), &mut seq);
        let want = describe(&src);
        ok_json(&envsnap(&store, &["--json", "save", "dir", src.to_str().unwrap(), "--key", "k"]));
        for mode in ["copy", "auto"] {
            let out = d.path().join(format!("out-{mode}"));
            ok_json(&envsnap(&store, &["--json", "restore", out.to_str().unwrap(), "--key", "k", "--link", mode]));
            prop_assert_eq!(&describe(&out), &want);
        }
    }
}
