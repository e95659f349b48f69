// Membership notes of a group ("Ana added Ben", "Ben left") as this user reads them, from
// the change the node describes (`m.membership`: the action, whom it names, whether it took
// effect); the note's `sender` is the member who made the change. Here what this user did
// reads "You left", and what was done to them "Ana removed you".

const VERBS = { added: 'added', removed: 'removed' };

/**
 * `{text, about}`: the note's text for this user, and what it says of them: 'left' (they
 * left), 'removed' (someone removed them), 'added', or null.
 */
export function membershipView(m, me) {
  const text = m.text || '';
  const change = m.membership;
  if (!change || !me || !me.user_id) return { text, about: null };
  const mine = m.sender === me.user_id;
  const by = mine ? 'You' : m.sender_name;
  if (!by) return { text, about: null };
  const late = change.applied === false ? ' (did not take effect)' : '';
  if (change.action === 'left') {
    return { text: `${by} left${late}`, about: mine && change.applied !== false ? 'left' : null };
  }
  if (change.action === 'created') {
    return { text: `${by} created the group ${change.title ?? ''}${late}`, about: null };
  }
  const verb = VERBS[change.action];
  if (!verb) return { text, about: null };
  const users = change.users || [];
  // This user among those changed (by someone else) reads "you".
  const meAt = mine ? -1 : users.findIndex((u) => u.user_id === me.user_id);
  const names = users.map((u, i) => (i === meAt ? 'you' : u.name || u.user_id.slice(0, 8)));
  const about = meAt >= 0 && change.applied !== false ? verb : null;
  return { text: `${by} ${verb} ${names.join(', ')}${late}`, about };
}
