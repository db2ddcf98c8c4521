//! The public API as a caller names it: every type a public signature hands out is
//! reachable through `shoal::`, and the names of backings and engines round-trip.
#![allow(clippy::unwrap_used)]

use shoal::{Backing, KvEngine};

#[test]
fn backings_and_engines_round_trip_through_their_names() {
    for &backing in Backing::ALL {
        assert_eq!(backing.to_string(), backing.as_str());
        assert_eq!(backing.to_string().parse::<Backing>().unwrap(), backing);
    }
    for engine in [KvEngine::Fjall, KvEngine::Sled, KvEngine::Postgres] {
        assert_eq!(engine.to_string(), engine.as_str());
        assert_eq!(engine.to_string().parse::<KvEngine>().unwrap(), engine);
    }
    let err = "lmdb".parse::<KvEngine>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown kv engine \"lmdb\" (expected fjall, sled or postgres)"
    );
    let err = "disk".parse::<Backing>().unwrap_err();
    assert!(matches!(err, shoal::Error::UnknownName { .. }), "{err:?}");
}

/// A build without the kv backing knows its name and says what it lacks.
#[cfg(not(feature = "kv-vfs"))]
#[test]
fn the_kv_backing_without_its_feature_is_a_clear_error() {
    let err = "kv".parse::<Backing>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "this shoal was built without the kv-vfs feature, which the kv backing needs"
    );
}

/// Names each public type through `shoal::` alone, as a caller that depends on no other
/// shoal crate must be able to.
#[test]
fn the_types_the_api_hands_out_are_reexported() {
    fn named<T>() -> &'static str {
        std::any::type_name::<T>()
    }
    let names = [
        named::<shoal::Store>(),
        named::<shoal::Config>(),
        named::<shoal::ActorTuning>(),
        named::<shoal::Backing>(),
        named::<shoal::KvEngine>(),
        named::<shoal::StoreLayout>(),
        named::<shoal::Durability>(),
        named::<shoal::Actor<'static>>(),
        named::<shoal::ActorStats>(),
        named::<shoal::CheckReport>(),
        named::<shoal::DbStats>(),
        named::<shoal::MemoryReport>(),
        named::<shoal::SqliteHeap>(),
        named::<shoal::HeapRefused>(),
        named::<shoal::Error>(),
        named::<shoal::VfsError>(),
        named::<shoal::rusqlite::Connection>(),
    ];
    assert!(names.iter().all(|n| !n.is_empty()));
    #[cfg(feature = "kv-vfs")]
    {
        let kv = [
            named::<shoal::Audit>(),
            named::<shoal::Vfs>(),
            named::<shoal::KvError>(),
        ];
        assert!(kv.iter().all(|n| !n.is_empty()));
    }
    // The one Durability: what a Config takes is what the VFS takes.
    let durability: shoal::Durability = shoal::Config::default().durability;
    let _: shoal_vfs::Durability = durability;
}
