export * from './guestkit/index.ts';
