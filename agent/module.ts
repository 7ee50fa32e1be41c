// What the controller starts and stops: each capability is one module whose constructor only
// stores what it is given (STYLE.md).
export interface Module {
  name: string;
  start(): Promise<void> | void;
  stop(): Promise<void> | void;
}
