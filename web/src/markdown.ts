// Chat text rendered as Matrix clients render what the bridge sends: CommonMark with
// tables and strikethrough (src/markdown.rs turns meeting chat into Matrix HTML with the
// same subset), built as DOM nodes from markdown-it's tokens. Raw HTML in the text stays
// text (markdown-it with `html: false`), no string of HTML is ever parsed, links go only
// to http(s) and mailto, and images become links, as on the Matrix side.

import MarkdownIt from 'markdown-it';
import type Token from 'markdown-it/lib/token.mjs';
import { h } from './dom';

const md = new MarkdownIt({ html: false, linkify: true, breaks: true, typographer: false });
// Bare web addresses become links; bare words that merely look like domains do not.
md.linkify.set({ fuzzyLink: false, fuzzyEmail: false, fuzzyIP: false });
// src/markdown.rs's URL_SCHEMES: anything else stays plain text.
md.validateLink = (url: string) => /^(https?:|mailto:)/i.test(url.trim());

/** The tags markdown-it may open here, and what each becomes (src/markdown.rs's allow-list). */
const BLOCK_TAGS: Record<string, keyof HTMLElementTagNameMap> = {
  p: 'p',
  blockquote: 'blockquote',
  ul: 'ul',
  ol: 'ol',
  li: 'li',
  table: 'table',
  thead: 'thead',
  tbody: 'tbody',
  tr: 'tr',
  th: 'th',
  td: 'td',
  strong: 'strong',
  em: 'em',
  s: 'del',
  // Headings would break the page's outline inside a chat log: bold paragraphs instead.
  h1: 'p',
  h2: 'p',
  h3: 'p',
  h4: 'p',
  h5: 'p',
  h6: 'p',
};

function link(href: string): HTMLAnchorElement {
  return h('a', { href, target: '_blank', rel: 'noopener noreferrer' });
}

function render(tokens: Token[], root: HTMLElement): void {
  const stack: HTMLElement[] = [root];
  const top = () => stack[stack.length - 1];
  for (const token of tokens) {
    if (token.type === 'inline') {
      render(token.children ?? [], top());
      continue;
    }
    if (token.nesting === 1) {
      // Paragraphs of tight lists are hidden: their text goes straight into the item.
      if (token.hidden) {
        stack.push(top());
        continue;
      }
      let el: HTMLElement;
      if (token.type === 'link_open') {
        el = link(token.attrGet('href') ?? '');
      } else {
        const tag = BLOCK_TAGS[token.tag] ?? 'span';
        el = document.createElement(tag);
        if (/^h[1-6]$/.test(token.tag)) el.className = 'md-heading';
        const start = token.attrGet('start');
        if (tag === 'ol' && start && /^\d+$/.test(start)) el.setAttribute('start', start);
      }
      top().appendChild(el);
      stack.push(el);
      continue;
    }
    if (token.nesting === -1) {
      if (stack.length > 1) stack.pop();
      continue;
    }
    switch (token.type) {
      case 'text':
        top().appendChild(document.createTextNode(token.content));
        break;
      case 'softbreak':
      case 'hardbreak':
        top().appendChild(document.createElement('br'));
        break;
      case 'code_inline':
        top().appendChild(h('code', {}, token.content));
        break;
      case 'code_block':
      case 'fence': {
        const code = h('code', {}, token.content.replace(/\n$/, ''));
        const lang = token.info.trim().split(/\s+/)[0];
        if (lang && /^[A-Za-z0-9_+-]+$/.test(lang)) code.className = `language-${lang}`;
        top().appendChild(h('pre', {}, code));
        break;
      }
      case 'hr':
        top().appendChild(document.createElement('hr'));
        break;
      case 'image': {
        // As on the Matrix side: the image is not loaded, its alt text links to it.
        const src = token.attrGet('src') ?? '';
        const alt = token.content || src;
        const a = md.validateLink(src) ? link(src) : document.createElement('span');
        a.textContent = alt;
        top().appendChild(a);
        break;
      }
      default:
        // html_inline / html_block never come with `html: false`; anything else unknown
        // is shown as its text.
        if (token.content) top().appendChild(document.createTextNode(token.content));
    }
  }
}

/** The message as DOM nodes (a fragment of block elements). */
export function renderMarkdown(text: string): DocumentFragment {
  const holder = document.createElement('div');
  render(md.parse(text, {}), holder);
  const fragment = document.createDocumentFragment();
  while (holder.firstChild) fragment.appendChild(holder.firstChild);
  return fragment;
}
