use tern_crypto::IdentityKey;

use super::op::{OP_VERSION_1, OpV1, encode, wire_bytes};
use super::*;

struct User {
    key: IdentityKey,
}

impl User {
    fn new() -> Self {
        User {
            key: IdentityKey::generate().unwrap(),
        }
    }
    fn id(&self) -> ByteArray<16> {
        ByteArray::new(*self.key.user_id().as_bytes())
    }
    fn raw(&self) -> [u8; 16] {
        *self.key.user_id().as_bytes()
    }
    fn entry(&self, admin: bool) -> MemberEntry {
        MemberEntry {
            user: self.id(),
            identity_key: ByteArray::new(*self.key.public().as_bytes()),
            name: "x".into(),
            relays: vec![],
            admin,
        }
    }
    /// An operation on `state`'s heads.
    fn op(&self, state: &GroupState, action: Action) -> SignedOp {
        SignedOp::sign(state.next_op(self.raw(), 0, 0, action), &self.key).unwrap()
    }
    /// An operation on chosen parents (as a forger would make it), with `lamport` free.
    fn op_on(
        &self,
        group: [u8; 16],
        parents: &[&SignedOp],
        lamport: u64,
        action: Action,
    ) -> SignedOp {
        let mut p: Vec<[u8; 32]> = parents.iter().map(|o| o.hash).collect();
        p.sort();
        p.dedup();
        let epoch = parents.iter().map(|o| o.op.epoch).max().unwrap() + 1;
        SignedOp::sign(
            Op {
                group: ByteArray::new(group),
                epoch,
                parents: p.into_iter().map(ByteArray::new).collect(),
                author: self.id(),
                at_ms: 0,
                lamport,
                action,
            },
            &self.key,
        )
        .unwrap()
    }
    fn add(&self, state: &GroupState, who: &User, admin: bool) -> SignedOp {
        self.op(
            state,
            Action::Add {
                members: vec![who.entry(admin)],
            },
        )
    }
    fn remove(&self, state: &GroupState, who: &User) -> SignedOp {
        self.op(
            state,
            Action::Remove {
                users: vec![who.id()],
            },
        )
    }
}

fn create_with(admin: &User, others: &[(&User, bool)]) -> SignedOp {
    let mut members = vec![admin.entry(true)];
    members.extend(others.iter().map(|(u, a)| u.entry(*a)));
    let salt = [7; 16];
    let group = group_id(
        &members[0].user.into_array(),
        &members[0].identity_key.into_array(),
        &salt,
    );
    SignedOp::sign(
        Op {
            group: ByteArray::new(group),
            epoch: 0,
            parents: Vec::new(),
            author: admin.id(),
            at_ms: 0,
            lamport: 0,
            action: Action::Create {
                title: "Team".into(),
                members,
                salt: ByteArray::new(salt),
            },
        },
        &admin.key,
    )
    .unwrap()
}

fn create(admin: &User, others: &[&User]) -> SignedOp {
    let o: Vec<(&User, bool)> = others.iter().map(|u| (*u, false)).collect();
    create_with(admin, &o)
}

/// Applies `op` on `ops`, which must take it.
fn push(ops: &mut Vec<SignedOp>, op: SignedOp) -> GroupState {
    let r = check_new(ops, &op).unwrap();
    ops.push(op);
    r.state
}

#[test]
fn nobody_but_the_creator_can_sign_a_creation_for_a_group_id() {
    let (a, b) = (User::new(), User::new());
    let real = create(&a, &[&b]);
    let s = GroupState::genesis(&real).unwrap();
    // Bob signs his own creation for Alice's group id, as its admin: refused.
    let mut forged = create(&b, &[&a]).op;
    forged.group = ByteArray::new(s.id);
    let forged = SignedOp::sign(forged, &b.key).unwrap();
    assert_eq!(
        GroupState::genesis(&forged),
        Err(OpError::NotAllowed(
            "the group id does not belong to the group's creator"
        ))
    );
    // Nor can Alice's own creation be moved to another id.
    let mut moved = real.op.clone();
    moved.group = ByteArray::new([9; 16]);
    let moved = SignedOp::sign(moved, &a.key).unwrap();
    assert!(GroupState::genesis(&moved).is_err());
    // Whatever order they are held in, the real one is the group.
    let r = resolve(&[forged, real.clone()]).unwrap();
    assert_eq!(r.linked, vec![real.hash]);
}

#[test]
fn round_trip_and_tampering() {
    let a = User::new();
    let op = create(&a, &[]);
    let back = SignedOp::from_bytes(op.to_bytes()).unwrap();
    assert_eq!(back, op);
    assert_eq!(op.to_bytes()[0], OP_VERSION);
    assert!(GroupState::genesis(&back).is_ok());
    // A flipped byte in the body breaks the signature or the encoding.
    let mut bytes = op.to_bytes().to_vec();
    let n = bytes.len();
    bytes[n - 70] ^= 1;
    if let Ok(o) = SignedOp::from_bytes(&bytes) {
        assert!(GroupState::genesis(&o).is_err());
    }
    assert!(matches!(
        SignedOp::from_bytes(&[9, 1, 2]),
        Err(OpError::UnsupportedVersion(9))
    ));
    assert!(SignedOp::from_bytes(&[]).is_err());
}

#[test]
fn first_format_operations_are_still_read() {
    let (a, b) = (User::new(), User::new());
    let g = create(&a, &[]);
    let s = GroupState::genesis(&g).unwrap();
    // An addition written by a build of the first format: one `parent`.
    let old = OpV1 {
        group: ByteArray::new(s.id),
        epoch: 1,
        parent: ByteArray::new(g.hash),
        author: a.id(),
        at_ms: 5,
        lamport: 2,
        action: Action::Add {
            members: vec![b.entry(false)],
        },
    };
    let body = encode(&old).unwrap();
    let signature = a.key.sign_group_operation(&body);
    let bytes = wire_bytes(OP_VERSION_1, &body, signature).unwrap();
    let op = SignedOp::from_bytes(&bytes).unwrap();
    assert_eq!(op.op.parents, vec![ByteArray::new(g.hash)]);
    assert_eq!(op.to_bytes(), bytes.as_slice());
    let r = resolve(&[g, op]).unwrap();
    assert!(r.state.is_member(&b.raw()));
    // The same body under the new version byte does not decode as a new-format operation.
    let relabelled = wire_bytes(OP_VERSION, &body, signature).unwrap();
    assert!(SignedOp::from_bytes(&relabelled).is_err());
}

#[test]
fn permissions_and_limits() {
    let (a, b, c) = (User::new(), User::new(), User::new());
    let mut ops = vec![create(&a, &[&b])];
    let s = resolve(&ops).unwrap().state;
    // A non-admin cannot add.
    let by_b = b.add(&s, &c, false);
    assert!(matches!(
        check_new(&ops, &by_b),
        Err(OpError::NotAllowed(_))
    ));
    // A forged author fails the signature.
    let mut forged = b.add(&s, &c, false);
    forged.op.author = a.id();
    assert_eq!(check_new(&ops, &forged).err(), Some(OpError::BadSignature));
    let s = push(&mut ops, a.add(&s, &c, false));
    assert!(s.is_member(&c.raw()));
    let s = push(&mut ops, a.remove(&s, &b));
    assert!(!s.is_member(&b.raw()));
    // A removed member's operations are refused.
    let late = b.op(&s, Action::Leave);
    assert!(check_new(&ops, &late).is_err());
    // Operations that do not fit their parents' epoch are left out of the graph.
    let mut bad = a.op(&s, Action::Leave).op;
    bad.epoch += 3;
    let bad = SignedOp::sign(bad, &a.key).unwrap();
    let mut with_bad = ops.clone();
    with_bad.push(bad.clone());
    assert_eq!(
        resolve(&with_bad).unwrap().outcomes[&bad.hash],
        Outcome::Unlinked
    );
}

#[test]
fn five_hundred_members_then_full() {
    let a = User::new();
    let mut ops = vec![create(&a, &[])];
    let mut s = resolve(&ops).unwrap().state;
    let users: Vec<User> = (0..MAX_GROUP_MEMBERS).map(|_| User::new()).collect();
    for chunk in users[..MAX_GROUP_MEMBERS - 1].chunks(MAX_MEMBERS_PER_OP) {
        let op = a.op(
            &s,
            Action::Add {
                members: chunk.iter().map(|u| u.entry(false)).collect(),
            },
        );
        s = push(&mut ops, op);
    }
    assert_eq!(s.members.len(), MAX_GROUP_MEMBERS);
    let one_more = a.add(&s, &users[MAX_GROUP_MEMBERS - 1], false);
    assert_eq!(
        check_new(&ops, &one_more).map(|_| ()),
        Err(OpError::Full {
            would: MAX_GROUP_MEMBERS + 1,
            max: MAX_GROUP_MEMBERS
        })
    );
}

#[test]
fn concurrent_changes_are_merged_whatever_the_arrival_order() {
    let (a, b, c, d) = (User::new(), User::new(), User::new(), User::new());
    let g = create_with(&a, &[(&b, true)]);
    let s = GroupState::genesis(&g).unwrap();
    // a adds c while b adds d, both on the creation: both stand.
    let x = a.add(&s, &c, false);
    let y = b.add(&s, &d, false);
    let r1 = resolve(&[g.clone(), x.clone(), y.clone()]).unwrap();
    let r2 = resolve(&[y.clone(), g.clone(), x.clone()]).unwrap();
    assert_eq!(r1.state, r2.state);
    assert_eq!(r1.applied, r2.applied);
    assert_eq!(r1.state.members.len(), 4);
    assert_eq!(r1.state.heads.len(), 2);
    // The next operation names both heads and follows both.
    let e = User::new();
    let z = a.add(&r1.state, &e, false);
    assert_eq!(z.op.parents.len(), 2);
    let r3 = resolve(&[z, y, x, g]).unwrap();
    assert_eq!(r3.state.members.len(), 5);
    assert_eq!(r3.state.heads.len(), 1);
}

/// The attack of a removed admin: sign an operation on the removal's parent (or any earlier
/// one) that removes every other admin, grinding its free fields for a low hash.
#[test]
fn a_removed_admin_cannot_rewrite_its_removal_however_it_grinds() {
    let (a, m, b, c) = (User::new(), User::new(), User::new(), User::new());
    let g = create_with(&a, &[(&m, false), (&b, false), (&c, false)]);
    let mut ops = vec![g.clone()];
    let s = resolve(&ops).unwrap().state;
    // m is made admin, then b.
    let s = push(
        &mut ops,
        a.op(
            &s,
            Action::Remove {
                users: vec![m.id()],
            },
        ),
    );
    let s = push(&mut ops, a.add(&s, &m, true));
    let grant_m = ops.last().unwrap().clone();
    let s = push(
        &mut ops,
        a.op(
            &s,
            Action::Remove {
                users: vec![b.id()],
            },
        ),
    );
    let s = push(&mut ops, a.add(&s, &b, true));
    let parent_of_removal = ops.last().unwrap().clone();
    // a removes m: R.
    let s = push(&mut ops, a.remove(&s, &m));
    assert!(!s.is_member(&m.raw()));
    // m forges on R's parent and on m's own grant, grinding 2,000 variants of each, each
    // removing b and c and adding a friend as admin.
    let friend = User::new();
    for parent in [&parent_of_removal, &grant_m] {
        for lamport in 0..2_000 {
            let remove = m.op_on(
                s.id,
                &[parent],
                lamport,
                Action::Remove {
                    users: vec![b.id(), c.id()],
                },
            );
            let add = m.op_on(
                s.id,
                &[parent],
                lamport,
                Action::Add {
                    members: vec![friend.entry(true)],
                },
            );
            let mut all = ops.clone();
            all.push(remove.clone());
            all.push(add.clone());
            let r = resolve(&all).unwrap();
            assert!(!r.state.is_member(&m.raw()));
            assert!(r.state.is_member(&b.raw()) && r.state.is_member(&c.raw()));
            assert!(!r.state.is_member(&friend.raw()));
            assert!(!r.is_applied(&remove.hash) && !r.is_applied(&add.hash));
            assert_eq!(r.outcomes[&remove.hash], Outcome::Refused(OpError::Void));
        }
    }
}

#[test]
fn only_a_more_senior_admin_removes_an_admin() {
    let (a, b, c) = (User::new(), User::new(), User::new());
    let mut ops = vec![create_with(&a, &[(&b, true)])];
    let s = resolve(&ops).unwrap().state;
    let s = push(&mut ops, a.add(&s, &c, true));
    // b (made admin by the creation a signed) cannot remove its creator; c (made later)
    // cannot remove b; b can remove c.
    assert!(matches!(
        check_new(&ops, &b.remove(&s, &a)),
        Err(OpError::NotAllowed(_))
    ));
    assert!(matches!(
        check_new(&ops, &c.remove(&s, &b)),
        Err(OpError::NotAllowed(_))
    ));
    let s = push(&mut ops, b.remove(&s, &c));
    assert!(!s.is_member(&c.raw()));
}

#[test]
fn the_longest_standing_member_succeeds_the_last_admin_whatever_the_ids() {
    let a = User::new();
    // Grind user ids: the member added last has the lowest id.
    let mut users: Vec<User> = (0..6).map(|_| User::new()).collect();
    users.sort_by_key(|u| std::cmp::Reverse(u.raw()));
    let first = &users[0];
    let mut ops = vec![create(&a, &[first])];
    let mut s = resolve(&ops).unwrap().state;
    for u in &users[1..] {
        s = push(&mut ops, a.add(&s, u, false));
    }
    let s = push(&mut ops, a.op(&s, Action::Leave));
    assert!(s.is_admin(&first.raw()));
    assert!(!s.is_admin(&users[5].raw()));
}

#[test]
fn an_addition_concurrent_with_a_removal_does_not_bring_the_member_back() {
    let (a, b, m) = (User::new(), User::new(), User::new());
    let mut ops = vec![create_with(&a, &[(&b, true), (&m, false)])];
    let s = resolve(&ops).unwrap().state;
    let s1 = push(&mut ops, a.remove(&s, &m));
    assert!(!s1.is_member(&m.raw()));
    // b, not having seen the removal, removes and re-adds m in one step of its own.
    let rb = b.remove(&s, &m);
    let mut b_ops = vec![ops[0].clone(), rb.clone()];
    let sb = resolve(&b_ops).unwrap().state;
    let back = b.add(&sb, &m, false);
    b_ops.push(back.clone());
    ops.push(rb);
    ops.push(back);
    let r = resolve(&ops).unwrap();
    assert!(!r.state.is_member(&m.raw()));
    // An addition made after seeing the removal does bring them back.
    let again = b.add(&r.state, &m, false);
    assert!(check_new(&ops, &again).unwrap().state.is_member(&m.raw()));
}

#[test]
fn the_state_at_heads_answers_who_was_a_member_then() {
    let (a, m) = (User::new(), User::new());
    let mut ops = vec![create(&a, &[&m])];
    let s = resolve(&ops).unwrap().state;
    let before = s.heads.clone();
    let s = push(&mut ops, a.remove(&s, &m));
    assert!(state_at(&ops, &before).unwrap().is_member(&m.raw()));
    assert!(!state_at(&ops, &s.heads).unwrap().is_member(&m.raw()));
    assert!(state_at(&ops, &[[3; 32]]).is_none());
}

mod property {
    //! Random concurrent operations from honest members and a malicious admin, delivered in
    //! random orders, against the guarantees in the module documentation.
    use proptest::prelude::*;

    use super::*;

    /// Honest members: 0 = the creator, 1 and 2 admins, 3 and 4 members. 5 = the malicious
    /// admin (made admin after 1 and before 2). 6.. = newcomers honest admins may add.
    const HONEST: [usize; 5] = [0, 1, 2, 3, 4];
    const BAD: usize = 5;

    struct Sim {
        users: Vec<User>,
        /// What each user holds (the malicious one holds everything at once).
        views: Vec<Vec<SignedOp>>,
        /// Deliveries not made yet: recipient, operation.
        pending: Vec<(usize, SignedOp)>,
        /// Deliveries held back until the end.
        late: Vec<(usize, SignedOp)>,
        /// Whether each honest view has seen the malicious admin removed.
        saw_bad_removed: Vec<bool>,
        /// The malicious admin's removal, once made.
        removal: Option<[u8; 32]>,
    }

    impl Sim {
        fn new() -> Sim {
            let users: Vec<User> = (0..9).map(|_| User::new()).collect();
            let g = create_with(
                &users[0],
                &[(&users[1], true), (&users[3], false), (&users[4], false)],
            );
            let mut ops = vec![g];
            let s = resolve(&ops).unwrap().state;
            let s = push(&mut ops, users[0].add(&s, &users[BAD], true));
            push(&mut ops, users[0].add(&s, &users[2], true));
            Sim {
                views: vec![ops; users.len()],
                users,
                pending: Vec::new(),
                late: Vec::new(),
                saw_bad_removed: vec![false; 9],
                removal: None,
            }
        }

        fn state(&self, u: usize) -> Resolved {
            resolve(&self.views[u]).unwrap()
        }

        fn send(&mut self, from: usize, op: SignedOp, to: &[usize]) {
            self.views[from].push(op.clone());
            for &t in to {
                if t != from {
                    self.pending.push((t, op.clone()));
                }
            }
            if from != BAD {
                self.views[BAD].push(op);
            }
        }

        /// An honest user acts on its own view, if the action is allowed there.
        fn honest(&mut self, who: usize, what: u8, target: usize) {
            let r = self.state(who);
            let me = self.users[who].raw();
            if !r.state.is_member(&me) {
                return;
            }
            let t = &self.users[target];
            let action = match what % 3 {
                // Never re-add the malicious admin: any return would be a rewrite.
                0 if target != BAD && !r.state.is_member(&t.raw()) => Action::Add {
                    members: vec![t.entry(target.is_multiple_of(2))],
                },
                1 if r.state.is_member(&t.raw()) && target != who => Action::Remove {
                    users: vec![t.id()],
                },
                _ => return,
            };
            // Only the creator removes the malicious admin (nobody can remove the creator,
            // so that removal is never void).
            if target == BAD && who != 0 {
                return;
            }
            let op =
                SignedOp::sign(r.state.next_op(me, 0, 0, action), &self.users[who].key).unwrap();
            if check_new(&self.views[who], &op).is_err() {
                return;
            }
            if target == BAD && what % 3 == 1 {
                self.removal = Some(op.hash);
            }
            let all: Vec<usize> = (0..self.users.len()).collect();
            self.send(who, op, &all);
        }

        /// The malicious admin signs an operation on any operations it holds, grinding its
        /// free fields, and sends it to some honest members.
        fn attack(&mut self, picks: &[u8], what: u8, target: usize, to_mask: u8) {
            let held = self.views[BAD].clone();
            let parents: Vec<&SignedOp> = picks
                .iter()
                .map(|p| &held[*p as usize % held.len()])
                .collect();
            let group = held[0].op.group.into_array();
            let t = &self.users[target];
            let action = match what % 3 {
                0 => Action::Remove {
                    users: vec![t.id()],
                },
                1 => Action::Add {
                    members: vec![self.users[8].entry(true)],
                },
                _ => Action::Remove {
                    users: HONEST
                        .iter()
                        .map(|h| self.users[*h].id())
                        .filter(|u| *u != t.id())
                        .collect(),
                },
            };
            let op = (0..32)
                .map(|l| self.users[BAD].op_on(group, &parents, l, action.clone()))
                .min_by_key(|o| o.hash)
                .unwrap();
            // Some members get it now (in a random order, with the rest of the traffic); the
            // others only at the end.
            let (now, later): (Vec<usize>, Vec<usize>) =
                HONEST.iter().partition(|h| to_mask >> *h & 1 == 1);
            for h in later {
                self.late.push((h, op.clone()));
            }
            self.send(BAD, op, &now);
        }

        fn deliver(&mut self, pick: usize) {
            if self.pending.is_empty() {
                return;
            }
            let (to, op) = self.pending.swap_remove(pick % self.pending.len());
            self.views[to].push(op);
        }

        fn check(&mut self) -> Result<(), TestCaseError> {
            let bad = self.users[BAD].raw();
            for h in HONEST {
                let r = self.state(h);
                if self.saw_bad_removed[h] {
                    prop_assert!(
                        !r.state.is_member(&bad),
                        "the removed admin is back at member {h}"
                    );
                }
                if let Some(removal) = self.removal
                    && r.is_applied(&removal)
                {
                    self.saw_bad_removed[h] = true;
                    prop_assert!(!r.state.is_member(&bad));
                    // Of what the malicious admin signed, only what came before its removal
                    // (an ancestor of it) applies.
                    let mut before = HashSet::new();
                    let mut todo = vec![removal];
                    while let Some(x) = todo.pop() {
                        if before.insert(x)
                            && let Some(o) = self.views[h].iter().find(|o| o.hash == x)
                        {
                            todo.extend(o.op.parents.iter().map(|p| p.into_array()));
                        }
                    }
                    for op in &self.views[h] {
                        if op.op.author.into_array() == bad && r.is_applied(&op.hash) {
                            prop_assert!(
                                before.contains(&op.hash),
                                "an operation of the removed admin applies at member {}",
                                h
                            );
                        }
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        #[test]
        fn honest_members_converge_and_the_removed_admin_stays_out(
            steps in proptest::collection::vec(
                (0u8..10, 0usize..9, 0u8..6, 0usize..9, proptest::collection::vec(any::<u8>(), 1..4), any::<u8>(), any::<usize>()),
                10..60,
            ),
            removal_at in 0usize..30,
        ) {
            let mut sim = Sim::new();
            for (i, (kind, who, what, target, picks, mask, pick)) in steps.into_iter().enumerate() {
                if i == removal_at {
                    sim.honest(0, 1, BAD);
                }
                match kind {
                    0..=2 => sim.honest(HONEST[who % HONEST.len()], what, target % 8),
                    3..=4 => sim.attack(&picks, what, HONEST[target % HONEST.len()], mask),
                    _ => sim.deliver(pick),
                }
                sim.check()?;
            }
            if sim.removal.is_none() {
                sim.honest(0, 1, BAD);
            }
            // Everything reaches everyone, in a random order.
            let late = std::mem::take(&mut sim.late);
            sim.pending.extend(late);
            let mut n = 0usize;
            while !sim.pending.is_empty() {
                n = n.wrapping_mul(31).wrapping_add(7);
                sim.deliver(n);
                sim.check()?;
            }
            let first = sim.state(0).state;
            for h in HONEST {
                let s = sim.state(h).state;
                prop_assert_eq!(&s.members, &first.members, "member {} differs", h);
            }
            prop_assert!(!first.is_member(&sim.users[BAD].raw()));
        }
    }
}
