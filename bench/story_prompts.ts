// Prompts and a chat template for stories260K, shared by the server tests and the soak.

/** Story openings of different lengths, for batching tests and load. */
export const PROMPTS = [
  "Once upon a time",
  "The cat",
  "Lily and Tom went to the park",
  "One day, a little bird",
  "The sun was shining and",
  "Ben had a red ball",
  "There was a big tree",
  "Mom said",
  "The dog ran fast",
  "A girl named Sue",
  "It was a rainy day",
  "The little boy wanted to",
  "Sam saw a frog",
  "In the forest there lived",
  "The princess looked at",
  "Tim and his friend",
];

/** A chat template for stories260K, which has none (it is not a chat model): the messages'
 * contents joined by spaces, so a one-message chat prompts exactly like a completion. */
export const JOIN_TEMPLATE =
  "{%- for m in messages %}{{ m.content }}{% if not loop.last %} {% endif %}{% endfor %}";
