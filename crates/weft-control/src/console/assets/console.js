// Syntax highlighting for the policy editor (HuJSON: JSON with comments and
// trailing commas). The highlighted copy is built with text nodes only, never
// innerHTML, and sits behind the transparent textarea. Without JavaScript the
// textarea is a plain one and everything else works the same.
"use strict";
(function () {
  const TOKEN = /(\/\/[^\n]*|\/\*[\s\S]*?\*\/)|("(?:[^"\\\n]|\\.)*"?)|\b(true|false|null)\b|(-?\d+(?:\.\d+)?)|([{}\[\],:])/g;
  const CLASSES = ["tk-c", "tk-s", "tk-k", "tk-n", "tk-p"];
  function paint(pre, text) {
    pre.textContent = "";
    let last = 0;
    for (const m of text.matchAll(TOKEN)) {
      if (m.index > last) pre.append(text.slice(last, m.index));
      const span = document.createElement("span");
      span.className = CLASSES[m.slice(1).findIndex((g) => g !== undefined)];
      span.textContent = m[0];
      pre.append(span);
      last = m.index + m[0].length;
    }
    pre.append(text.slice(last) + "\n");
  }
  for (const box of document.querySelectorAll(".editor")) {
    const ta = box.querySelector("textarea");
    const pre = box.querySelector("pre.hl");
    if (!ta || !pre) continue;
    box.classList.add("js");
    const update = () => paint(pre, ta.value);
    ta.addEventListener("input", update);
    ta.addEventListener("scroll", () => { pre.scrollTop = ta.scrollTop; });
    update();
  }
})();
