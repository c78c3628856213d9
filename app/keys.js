() => {
  // Keyboard-first labeling: each key clicks the button with id key-<name> if it is visible.
  // Keys do nothing while the user types in a text box, except ctrl+enter (submit a written answer).
  const map = {"a": "key-a", "x": "key-x", "1": "key-1", "2": "key-2", "3": "key-3", "0": "key-0",
               " ": "key-space", "Backspace": "key-undo"};
  const visible = (el) => el && el.offsetParent !== null;
  const click = (id) => {
    const host = document.getElementById(id);
    if (!visible(host)) return false;
    const btn = host.tagName === "BUTTON" ? host : host.querySelector("button") || host;
    btn.click();
    return true;
  };
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const textTypes = ["text", "search", "email", "password", "number", "url", "tel"];
    const typing = t && (t.tagName === "TEXTAREA" || t.isContentEditable ||
                         (t.tagName === "INPUT" && textTypes.includes((t.type || "text").toLowerCase())));
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      if (click("key-submit")) e.preventDefault();
      return;
    }
    if (typing || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "h") {
      const acc = document.querySelector("#label-guidelines button, #label-guidelines .label-wrap");
      if (acc) { acc.click(); e.preventDefault(); }
      return;
    }
    const id = map[e.key];
    if (id && click(id)) e.preventDefault();
  });
}
