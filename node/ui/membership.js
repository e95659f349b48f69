// Membership notes of a group ("Ana added Ben", "Ben left") as this user reads them: the node
// writes every one in the third person, naming this user by their own name; the note's
// `sender` is the member who made the change. Here what this user did reads "You left",
// and what was done to them "Ana removed you".

const VERBS = [' created the group ', ' added ', ' removed '];

/**
 * `{text, about}`: the note's text for this user, and what it says of them: 'left' (they
 * left), 'removed' (someone removed them), 'added', or null.
 */
export function membershipView(m, me) {
  const text = m.text || '';
  if (!me || !me.user_id) return { text, about: null };
  const mine = m.sender === me.user_id;
  // Who made the change: their name starts the text.
  const by = mine ? me.name : m.sender_name;
  if (!by || !text.startsWith(by + ' ') && text !== by) return { text, about: null };
  const rest = text.slice(by.length);
  const subject = mine ? 'You' : by;
  if (rest === ' left') return { text: `${subject} left`, about: mine ? 'left' : null };
  const verb = VERBS.find((v) => rest.startsWith(v));
  if (!verb) return { text, about: null };
  const object = rest.slice(verb.length);
  if (verb === ' created the group ') return { text: `${subject}${verb}${object}`, about: null };
  // The names changed, one of which may be this user's.
  const names = object.split(', ');
  const at = mine ? -1 : names.indexOf(me.name);
  if (at >= 0) names[at] = 'you';
  const about = at >= 0 ? (verb === ' removed ' ? 'removed' : 'added') : null;
  return { text: `${subject}${verb}${names.join(', ')}`, about };
}
